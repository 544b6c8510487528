"""Tests for sslc.metrics: analytic MACs against FlopCounterMode and thop, parameter counts, latency."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sslc.metrics import (
    REFERENCE_SECONDS,
    LatencyResult,
    MacBreakdown,
    compare_latency,
    count_cnn_macs,
    count_layer_macs,
    count_layer_params_from_config,
    count_macs,
    count_macs_by_module,
    count_macs_of_model,
    count_nonzero_params,
    count_params,
    count_params_from_config,
    exact_counting,
    format_macs,
    format_params,
    measure_latency,
    measure_mac_breakdown,
)
from sslc.models import (
    PRESETS,
    ConvLayerSpec,
    EncoderConfig,
    LayerSpec,
    SpeechEncoder,
    base_config,
    build_encoder,
    large_config,
    tiny_config,
)

ONE_SECOND = 16000

# Head-less layers and FFN-less layers have zero-element weights, whose initialisation torch warns about.
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")


# ---- configs ---------------------------------------------------------------------------------------------------
def _edit(config: EncoderConfig, **changes) -> EncoderConfig:
    return dataclasses.replace(config.copy(), **changes).validate()


def _pruned_tiny() -> EncoderConfig:
    """Per-layer heads (one layer with none), FFN widths (one with none), low-rank linears, pruned convs."""
    return _edit(
        tiny_config("hubert"),
        conv_layers=[
            ConvLayerSpec(c, k, s)
            for c, (k, s) in zip([20, 31, 17, 32, 9, 12, 25], [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2)
        ],
        layers=[
            LayerSpec(heads=3, ffn_dim=100, ranks={"q": 5, "fc2": 7}),
            LayerSpec(heads=0, ffn_dim=64),
            LayerSpec(heads=4, ffn_dim=0),
            LayerSpec(heads=1, ffn_dim=0, ranks={"out": 2}),
            LayerSpec(heads=2, ffn_dim=9, ranks={"q": 1, "k": 2, "v": 3, "out": 4, "fc1": 5, "fc2": 6}),
        ],
    )


def _pruned_tiny_wavlm() -> EncoderConfig:
    """WavLM with kept-head subsets, a layer without attention (a low-rank fc1), and depth 3."""
    return _edit(
        tiny_config("wavlm"),
        conv_layers=[
            ConvLayerSpec(c, k, s)
            for c, (k, s) in zip([32, 8, 16, 24, 32, 5, 40], [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2)
        ],
        layers=[
            LayerSpec(heads=2, ffn_dim=50, head_index=[3, 1], ranks={"k": 4, "v": 8, "out": 6}),
            LayerSpec(heads=0, ffn_dim=40, head_index=[], ranks={"fc1": 5}),
            LayerSpec(heads=4, ffn_dim=128),
        ],
    )


def _odd_front_end() -> EncoderConfig:
    """wav2vec2 layout with an odd positional kernel (no trim), LayerNorm convs with bias, no projection norm."""
    return _edit(
        tiny_config("wav2vec2"),
        conv_layers=[ConvLayerSpec(16, 7, 3), ConvLayerSpec(12, 5, 2), ConvLayerSpec(20, 4, 4)],
        extractor_norm="layer",
        conv_bias=True,
        layer_norm_first=True,
        projection_layer_norm=False,
        embed_dim=48,
        head_dim=12,
        pos_conv_kernel=15,
        pos_conv_groups=3,
        layers=[LayerSpec(heads=4, ffn_dim=30), LayerSpec(heads=2, ffn_dim=70, ranks={"fc1": 10})],
    )


def _no_layers() -> EncoderConfig:
    return _edit(tiny_config("hubert"), layers=[])


def _pruned_base() -> EncoderConfig:
    """HuBERT Base layout pruned unevenly: channels per conv, 5 layers with mixed heads, FFN and ranks."""
    return _edit(
        base_config("hubert"),
        conv_layers=[
            ConvLayerSpec(c, k, s)
            for c, (k, s) in zip([300, 512, 256, 480, 128, 333, 200], [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2)
        ],
        layers=[
            LayerSpec(heads=12, ffn_dim=3072),
            LayerSpec(heads=7, ffn_dim=1500, ranks={"q": 64, "k": 64}),
            LayerSpec(heads=0, ffn_dim=2000, ranks={"fc1": 256, "fc2": 128}),
            LayerSpec(heads=3, ffn_dim=0),
            LayerSpec(heads=1, ffn_dim=17, ranks={"v": 32, "out": 16}),
        ],
    )


def _pruned_wavlm_large() -> EncoderConfig:
    """WavLM Large layout (pre-LN, LayerNorm convs with bias) with 3 uneven layers."""
    return _edit(
        large_config("wavlm"),
        conv_layers=[
            ConvLayerSpec(c, k, s)
            for c, (k, s) in zip([512, 400, 300, 512, 200, 100, 512], [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2)
        ],
        layers=[
            LayerSpec(heads=16, ffn_dim=4096),
            LayerSpec(heads=5, ffn_dim=1000, head_index=[0, 3, 7, 11, 15], ranks={"out": 100}),
            LayerSpec(heads=0, ffn_dim=0, head_index=[]),
        ],
    )


SMALL_HETEROGENEOUS = {
    "pruned-tiny": _pruned_tiny,
    "pruned-tiny-wavlm": _pruned_tiny_wavlm,
    "odd-front-end": _odd_front_end,
    "no-layers": _no_layers,
}
LARGE_HETEROGENEOUS = {"pruned-base": _pruned_base, "pruned-wavlm-large": _pruned_wavlm_large}
ALL_CONFIGS = {**{name: f for name, f in PRESETS.items()}, **SMALL_HETEROGENEOUS, **LARGE_HETEROGENEOUS}


def _on_meta(config: EncoderConfig) -> SpeechEncoder:
    """The model's structure without its memory or initialisation time (FlopCounterMode only needs shapes)."""
    with torch.device("meta"):
        return SpeechEncoder(config)


def _flop_counter_macs(fn, *args) -> int:
    with torch.no_grad(), exact_counting(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2


# ---- MACs: analytic vs FlopCounterMode ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hubert_base():
    return build_encoder(base_config("hubert"), seed=0)


def test_hubert_base_at_reference_length_matches_flop_counter(hubert_base):
    analytic = count_macs(hubert_base.config)  # 10 s at 16 kHz by default
    assert REFERENCE_SECONDS == 10.0
    assert analytic.total == count_macs_of_model(hubert_base, 160000)
    assert round(analytic.total / 1e9, 2) == 74.07
    assert format_macs(analytic.total) == "74.07 G"


def test_hubert_base_parts_match_flop_counter_per_module(hubert_base):
    assert measure_mac_breakdown(hubert_base, ONE_SECOND) == count_macs(hubert_base.config, seconds=1.0)


def test_cnn_alone_matches_flop_counter(hubert_base):
    waveform = torch.randn(1, 23456)
    measured = _flop_counter_macs(hubert_base.feature_extractor, waveform)
    assert (
        measured
        == count_cnn_macs(hubert_base.config, 23456)
        == count_macs(hubert_base.config, num_samples=23456).cnn
    )


def test_positional_conv_alone_matches_flop_counter(hubert_base):
    frames = 77
    measured = _flop_counter_macs(hubert_base.pos_conv, torch.randn(1, frames, hubert_base.config.embed_dim))
    analytic = count_macs(hubert_base.config, num_samples=320 * frames + 80)
    assert hubert_base.config.frames_for(320 * frames + 80) == frames
    assert measured == analytic.positional_conv


@pytest.mark.parametrize("preset", ["wavlm-base", "tiny", "tiny-wavlm"])
def test_presets_match_flop_counter_on_cpu(preset):
    config = PRESETS[preset]()
    model = build_encoder(config, seed=0)
    assert measure_mac_breakdown(model, ONE_SECOND) == count_macs(config, seconds=1.0)


def test_large_layout_matches_flop_counter_on_cpu():
    model = build_encoder(large_config("hubert"), seed=0)
    assert count_macs_of_model(model, ONE_SECOND) == count_macs(model.config, seconds=1.0).total
    del model


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
@pytest.mark.parametrize("num_samples", [ONE_SECOND, 160000])
def test_every_config_matches_flop_counter_by_part(name, num_samples):
    # The meta device runs the same modules without data, so even large layouts at 10 s take a fraction of a second.
    config = ALL_CONFIGS[name]()
    assert measure_mac_breakdown(_on_meta(config), num_samples) == count_macs(config, num_samples=num_samples)


@pytest.mark.parametrize("name", list(SMALL_HETEROGENEOUS))
@pytest.mark.parametrize("num_samples", [ONE_SECOND, 12345, 401])
def test_heterogeneous_configs_match_flop_counter_on_cpu(name, num_samples):
    config = SMALL_HETEROGENEOUS[name]()
    model = build_encoder(config, seed=1)
    assert measure_mac_breakdown(model, num_samples) == count_macs(config, num_samples=num_samples)


def test_pruned_base_matches_flop_counter_on_cpu():
    config = _pruned_base()
    model = build_encoder(config, seed=0)
    assert count_macs_of_model(model, ONE_SECOND) == count_macs(config, seconds=1.0).total


def test_layer_macs_add_up_and_follow_the_spec():
    config = _pruned_tiny_wavlm()
    frames = config.frames_for(ONE_SECOND)
    layers = [count_layer_macs(config, i, frames) for i in range(config.num_layers)]
    whole = count_macs(config, seconds=1.0)
    assert sum(layer.total for layer in layers) == whole.total - whole.cnn - whole.feature_projection - (
        whole.positional_conv
    )
    headless = layers[1]
    # No heads: the attention block is removed (no projections, matmuls or gate); its low-rank FFN remains.
    assert headless.attention_matmuls == headless.relative_position_gate == headless.attention_projections == 0
    assert headless.ffn == frames * (config.embed_dim * 5 + 5 * 40 + 40 * config.embed_dim)
    assert layers[0].attention_matmuls == 2 * 2 * frames * frames * config.head_dim
    assert layers[0].relative_position_gate == 2 * frames * config.head_dim * 8


def test_mac_breakdown_helpers():
    parts = count_macs(tiny_config(), seconds=1.0)
    as_dict = parts.as_dict()
    assert as_dict["total"] == parts.total == sum(v for k, v in as_dict.items() if k != "total")
    assert set(as_dict) == {f.name for f in dataclasses.fields(MacBreakdown)} | {"total"}
    assert (parts + parts).total == 2 * parts.total
    assert count_macs(tiny_config(), seconds=0.5) == count_macs(tiny_config(), num_samples=8000)
    assert count_macs(tiny_config(), seconds=1.0, sample_rate=8000) == count_macs(
        tiny_config(), num_samples=8000
    )
    assert format_macs(6_911_374_336) == "6.91 G"
    assert format_macs(15_275_968) == "15.28 M"
    assert format_macs(74_066_523_136, unit="M") == "74066.52 M"
    assert format_params(94_370_944) == "94.37 M"


@pytest.mark.parametrize(
    "kwargs", [{"seconds": 0}, {"seconds": -1.0}, {"num_samples": 0}, {"num_samples": 300}]
)
def test_count_macs_rejects_empty_or_too_short_input(kwargs):
    with pytest.raises(ValueError):
        count_macs(tiny_config(), **kwargs)


def test_count_macs_by_module_names_match_named_modules():
    model = build_encoder(tiny_config(), seed=0)
    measured = count_macs_by_module(model, ONE_SECOND)
    names = dict(model.named_modules())
    assert set(measured) <= set(names)
    assert measured[""] == count_macs(model.config, seconds=1.0).total


# ---- MACs: thop cross-check -----------------------------------------------------------------------------------
def _thop_macs(model: SpeechEncoder, num_samples: int) -> int:
    """thop with rules for what it misses or over-counts compared with FlopCounterMode.

    thop hooks modules by exact type: it misses the attention matmuls (functional, inside SelfAttention) and the
    weight-normed positional conv (a generated `ParametrizedConv1d` class), and it counts LayerNorm's arithmetic,
    which FlopCounterMode does not. nn.Linear is in_features * output elements (biases free), nn.Conv1d
    out elements * in / groups * kernel (biases free): the same as ours. LowRankLinear needs no rule: thop walks
    into its two nn.Linear children.
    """
    import thop  # in the dev extra, never skipped; thop 0.1.1 imports distutils, setuptools shims it on 3.12+
    from thop.vision.basic_hooks import count_convNd, zero_ops

    def attention_matmuls(module, inputs, output):
        # `context` is the identity hook on the per-head context [B, T, heads * head_dim] of a SelfAttention:
        # QK^T and AV each cost B * heads * T * T * head_dim = T * context.numel().
        context = inputs[0]
        module.total_ops += torch.DoubleTensor([2 * context.shape[1] * context.numel()])

    identities = [name for name, m in model.named_modules() if type(m) is nn.Identity]
    assert all(name.endswith(".attention.context") for name in identities)
    rules = {nn.LayerNorm: zero_ops, type(model.pos_conv.conv): count_convNd, nn.Identity: attention_matmuls}
    waveform = torch.randn(1, num_samples)
    total, _ = thop.profile(model, inputs=(waveform,), custom_ops=rules, verbose=False)
    return int(total)


@pytest.mark.parametrize("config_fn", [tiny_config, _pruned_tiny, _pruned_tiny_wavlm, _odd_front_end])
def test_thop_with_custom_rules_agrees(config_fn):
    config = config_fn()
    # thop leaves counter buffers on modules it did not hook, so it gets a model of its own.
    assert _thop_macs(build_encoder(config, seed=0), ONE_SECOND) == count_macs(config, seconds=1.0).total


# ---- parameters -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_params_from_config_equal_the_built_model(name):
    config = ALL_CONFIGS[name]()
    model = _on_meta(config)
    assert count_params_from_config(config) == count_params(model)
    layer_params = [count_params(layer) for layer in model.layers]
    assert layer_params == [count_layer_params_from_config(config, i) for i in range(config.num_layers)]


def test_hubert_base_param_count(hubert_base):
    assert count_params(hubert_base) == 94_370_944
    assert count_params_from_config(base_config("hubert")) == 94_370_944
    assert format_params(count_params(hubert_base)) == "94.37 M"


@pytest.mark.parametrize("config_fn", [_pruned_tiny, _pruned_tiny_wavlm, _odd_front_end])
def test_params_of_real_heterogeneous_models(config_fn):
    config = config_fn()
    model = build_encoder(config, seed=0)
    assert count_params(model) == count_params_from_config(config)
    # A parameter entry that happens to be zero is rare for a random init but possible (e.g. zero biases).
    assert count_nonzero_params(model) <= count_params(model)


def test_nonzero_params_track_zeroed_entries():
    model = build_encoder(tiny_config(), seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
        before = count_nonzero_params(model)
        model.layers[0].feed_forward.fc1.weight[:10].zero_()
        model.layers[1].attention.q_proj.bias.zero_()
    assert before == count_params(model)
    zeroed = 10 * model.config.embed_dim + model.config.layers[1].heads * model.config.head_dim
    assert count_nonzero_params(model) == before - zeroed


# ---- latency --------------------------------------------------------------------------------------------------
def test_measure_latency_reports_sane_fields():
    model = build_encoder(tiny_config(), seed=0).train()
    threads = torch.get_num_threads()
    result = measure_latency(model, seconds=0.5, warmup=1, repeats=3)
    assert isinstance(result, LatencyResult)
    assert 0 < result.min_ms <= result.median_ms <= result.max_ms
    assert (result.repeats, result.batch, result.seconds, result.device) == (3, 1, 0.5, "cpu")
    assert result.torch_threads == threads == torch.get_num_threads()
    assert model.training  # the mode is restored
    assert result.as_dict()["median_ms"] == result.median_ms


def test_measure_latency_thread_setting_is_recorded_and_restored():
    model = build_encoder(tiny_config(), seed=0)
    before = torch.get_num_threads()
    result = measure_latency(model, seconds=0.2, batch=2, warmup=0, repeats=1, threads=1)
    assert result.torch_threads == 1 and result.batch == 2
    assert result.min_ms == result.median_ms == result.max_ms
    assert torch.get_num_threads() == before


def test_compare_latency_times_every_model():
    models = {"tiny": build_encoder(tiny_config(), seed=0), "small": build_encoder(_pruned_tiny(), seed=0)}
    results = compare_latency(models, seconds=0.3, warmup=1, repeats=4)
    assert list(results) == ["tiny", "small"]
    for result in results.values():
        assert result.repeats == 4 and result.min_ms <= result.median_ms <= result.max_ms
    assert compare_latency({}) == {}


@pytest.mark.parametrize(
    "kwargs", [{"seconds": 0}, {"repeats": 0}, {"warmup": -1}, {"batch": 0}, {"threads": 0}]
)
def test_latency_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        measure_latency(build_encoder(tiny_config(), seed=0), **kwargs)


# ---- the SUPERB profiler's convention -------------------------------------------------------------------------
def test_superb_convention_of_hubert_base_is_the_published_figure_and_the_flop_counters():
    from sslc.metrics import SUPERB_UTTERANCE_SAMPLES, count_macs_superb, macs_in_convention

    config = PRESETS["hubert-base"]()
    superb = count_macs_superb(config)
    assert len(SUPERB_UTTERANCE_SAMPLES) == 32 and sum(SUPERB_UTTERANCE_SAMPLES) == 3_597_760  # 224.86 s
    assert superb == pytest.approx(1669e9, rel=0.005)  # the SUPERB tables' HuBERT Base
    model = _on_meta(config)  # FlopCounterMode over the same 32 lengths, on the meta device
    assert superb == sum(count_macs_of_model(model, n) for n in SUPERB_UTTERANCE_SAMPLES)
    assert macs_in_convention(config, "superb") == superb
    assert macs_in_convention(config, "seconds", 10.0) == count_macs(config, seconds=10.0).total
    with pytest.raises(ValueError, match="unknown MACs convention"):
        macs_in_convention(config, "flops")


def test_the_cli_and_the_metrics_offer_the_same_conventions():
    from sslc.metrics import MACS_CONVENTIONS
    from sslc.search.settings import MACS_CONVENTIONS as OFFERED

    assert OFFERED == MACS_CONVENTIONS
