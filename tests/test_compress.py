"""Tests for sslc.compress: the config, every operator, importance scores and their cache.

Structured pruning is checked against the teacher with the pruned heads / units / channels zeroed by hooks: if
the student is the physically sliced teacher, both give the same hidden states.
"""

from __future__ import annotations

import dataclasses
import random
import re

import pytest
import torch
from builders import pre_ln_tiny, random_teacher
from torch import nn

import sslc.compress.importance as importance_module
from sslc.compress import (
    CompressionConfig,
    ConfigError,
    ImportanceCache,
    compress,
    conv_scores_l1,
    factorize,
    ffn_scores_l1,
    head_scores_l1,
    importance_scores,
    low_rank_linear,
    prunable_linears,
)
from sslc.compress.slicing import top_k
from sslc.errors import UserError
from sslc.metrics import (
    count_macs,
    count_macs_of_model,
    count_nonzero_params,
    count_params,
    count_params_from_config,
)
from sslc.models import PRESETS, build_encoder, tiny_config

SAMPLES = 16000  # 1 s of audio
TOL = 1e-5


@pytest.fixture(scope="module", params=["tiny", "tiny-wavlm"])
def teacher(request):
    return random_teacher(PRESETS[request.param]())


@pytest.fixture(scope="module")
def tiny():
    return random_teacher(PRESETS["tiny"]())


@pytest.fixture(scope="module")
def batch():
    """Two utterances, the second one padded: exercises the frame masks as well."""
    waveforms = torch.randn(2, SAMPLES, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([SAMPLES, 11000])
    waveforms[1, 11000:] = 0.0
    return waveforms, lengths


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(2)
    return [
        (torch.randn(2, SAMPLES, generator=generator), torch.tensor([SAMPLES, SAMPLES])) for _ in range(2)
    ]


def hidden(model, batch, hooks=()):
    """Hidden states of `model` on `batch`, with (module, forward-hook) pairs installed for the call."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            return model(*batch).hidden_states
    finally:
        for handle in handles:
            handle.remove()


def max_difference(a, b) -> float:
    assert len(a) == len(b)
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def zero_outside(kept: torch.Tensor, size: int, group: int = 1, dim: int = -1):
    """A forward hook zeroing every entry along `dim` outside `kept` (in groups of `group` entries)."""
    mask = torch.zeros(size, dtype=torch.bool)
    mask[kept] = True
    mask = mask.repeat_interleave(group)

    def hook(module, inputs, output):
        shape = [1] * output.dim()
        shape[dim] = mask.numel()
        return output * mask.view(shape).to(output.dtype)

    return hook


def random_config(teacher_config, rng: random.Random, thin: bool = False) -> CompressionConfig:
    """A config mixing every size knob; `thin`: also a hidden width below the teacher's (sometimes the full one)."""
    total = teacher_config.num_layers
    layers = sorted(rng.sample(range(total), rng.randint(1, total)))
    heads = [rng.randint(1, teacher_config.layers[t].heads) for t in layers]
    ffn = [rng.randint(1, teacher_config.layers[t].ffn_dim) for t in layers]
    groups, head_dim = teacher_config.pos_conv_groups, teacher_config.head_dim
    embed = rng.randrange(groups, teacher_config.embed_dim + 1, groups) if thin else teacher_config.embed_dim
    return CompressionConfig(
        layers=layers,
        heads=heads,
        ffn=ffn,
        attn_rank=[rng.choice([None, rng.randint(1, min(embed, h * head_dim))]) for h in heads],
        ffn_rank=[rng.choice([None, rng.randint(1, min(embed, f))]) for f in ffn],
        conv_channels=[rng.randint(1, conv.channels) for conv in teacher_config.conv_layers],
        hidden=embed if thin else None,
    )


def without_head_index(config):
    """The config without what only the importance scores decide (which heads and residual channels)."""
    config = config.copy()
    config.residual_index = None
    for layer in config.layers:
        layer.head_index = None
    return config


# ---- identity and exactness ---------------------------------------------------------------------------------
def test_identity_reproduces_teacher(teacher, batch):
    config = CompressionConfig.identity(teacher.config)
    student = compress(teacher, config)
    assert isinstance(student, type(teacher)) and not student.training
    assert without_head_index(student.config) == without_head_index(teacher.config)
    assert max_difference(hidden(student, batch), hidden(teacher, batch)) <= TOL


def test_all_heads_at_full_rank_reproduces_teacher(teacher, batch):
    config = CompressionConfig.identity(teacher.config)
    embed = teacher.config.embed_dim
    config.attn_rank = [min(embed, s.heads * teacher.config.head_dim) for s in teacher.config.layers]
    config.ffn_rank = [min(embed, s.ffn_dim) for s in teacher.config.layers]
    student = compress(teacher, config)
    assert all(layer.ranks for layer in student.config.layers)
    assert max_difference(hidden(student, batch), hidden(teacher, batch)) <= TOL


def test_depth_keeps_the_chosen_layers_weights(teacher, batch):
    student = compress(teacher, CompressionConfig.keep_layers(teacher.config, [1]))
    assert student.config.num_layers == 1
    reference = hidden(teacher, batch)
    with torch.no_grad():
        frames = reference[0].shape[1]
        mask = torch.arange(frames)[None, :] < teacher.feature_extractor.output_lengths(batch[1])[:, None]
        bias = teacher.relative_position(frames) if teacher.relative_position is not None else None
        expected = teacher.layers[1](reference[0], mask, bias)
    got = hidden(student, batch)
    assert max_difference(got, [reference[0], expected]) <= TOL


def test_head_and_ffn_pruning_equal_zeroing_them_in_the_teacher(teacher, batch):
    spec = teacher.config
    config = CompressionConfig.identity(spec)
    config.heads = [2, 3]
    config.ffn = [40, 97]
    student = compress(teacher, config)
    head_scores, unit_scores = head_scores_l1(teacher), ffn_scores_l1(teacher)
    hooks = []
    for i, layer in enumerate(teacher.layers):
        heads = top_k(head_scores[i], config.heads[i])
        units = top_k(unit_scores[i], config.ffn[i])
        hooks.append((layer.attention.context, zero_outside(heads, layer.attention.heads, spec.head_dim)))
        hooks.append((layer.feed_forward.activation, zero_outside(units, spec.layers[i].ffn_dim)))
        if spec.relative_position is not None:
            assert student.config.layers[i].head_index == heads.tolist()
        assert student.layers[i].attention.q_proj.weight.shape == (
            config.heads[i] * spec.head_dim,
            spec.embed_dim,
        )
        assert student.layers[i].feed_forward.fc2.weight.shape == (spec.embed_dim, config.ffn[i])
    assert max_difference(hidden(student, batch), hidden(teacher, batch, hooks)) <= TOL


def test_pruning_a_pruned_wavlm_composes_head_index(batch):
    teacher = random_teacher(PRESETS["tiny-wavlm"]())
    config = CompressionConfig.identity(teacher.config)
    config.heads = [3, 3]
    first = compress(teacher, config)
    config = CompressionConfig.identity(first.config)
    config.heads = [2, 1]
    second = compress(first, config)
    # The composed indices name the original teacher's heads: each kept head of the second pruning, looked up in
    # the first one's index (the l1 order of each step is read from its own input model).
    scores = head_scores_l1(first)
    for layer, (before, after) in enumerate(zip(first.config.layers, second.config.layers)):
        kept = sorted(torch.argsort(-scores[layer], stable=True)[: config.heads[layer]].tolist())  # the l1 top-k
        assert after.head_index == [before.head_index[i] for i in kept]
        assert len(after.head_index) == config.heads[layer]
    hidden(second, batch)  # runs with the composed indices


def test_conv_channel_pruning_equals_zeroing_channels(tiny, batch):
    # Without a norm across channels (GroupNorm is per channel here), a zeroed channel is a removed one;
    # the last conv feeds the projection's LayerNorm, whose statistics would change, so it is kept whole.
    config = CompressionConfig.identity(tiny.config)
    config.conv_channels = [20, 9, 32, 17, 5, 30, 32]
    student = compress(tiny, config)
    hooks = [
        (block, zero_outside(top_k(scores, kept), scores.numel(), dim=1))
        for block, scores, kept in zip(
            tiny.feature_extractor.blocks, conv_scores_l1(tiny), config.conv_channels
        )
    ]
    assert max_difference(hidden(student, batch), hidden(tiny, batch, hooks)) <= TOL


def test_conv_channel_pruning_with_layer_norm_front_end(batch):
    spec = dataclasses.replace(tiny_config("hubert"), extractor_norm="layer", conv_bias=True).validate()
    teacher = random_teacher(spec)
    config = CompressionConfig.identity(spec)
    config.conv_channels = [8, 16, 24, 32, 4, 12, 10]
    student = compress(teacher, config)
    for block, kept in zip(student.feature_extractor.blocks, config.conv_channels):
        assert block.conv.out_channels == kept and block.conv.bias.shape == (kept,)
        assert block.norm.weight.shape == (kept,)
    assert student.feature_projection.layer_norm.weight.shape == (10,)
    assert student.feature_projection.projection.in_features == 10
    assert count_macs_of_model(student, SAMPLES) == count_macs(student.config, num_samples=SAMPLES).total
    assert count_macs(student.config, num_samples=SAMPLES).cnn < count_macs(spec, num_samples=SAMPLES).cnn
    assert torch.isfinite(hidden(student, batch)[-1]).all()


# ---- analytic costs ------------------------------------------------------------------------------------------
def test_random_configs_analytic_costs_match_the_built_student(teacher):
    rng = random.Random(teacher.config.family)
    for _ in range(6):
        config = random_config(teacher.config, rng)
        architecture = config.student_architecture(teacher.config)
        student = compress(teacher, config)
        assert without_head_index(student.config) == without_head_index(architecture)
        assert count_macs(architecture, num_samples=SAMPLES).total == count_macs_of_model(student, SAMPLES)
        assert count_params_from_config(architecture) == count_params(student)
        rebuilt = build_encoder(student.config)  # the config rebuilds the student exactly
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in student.state_dict().items()
        }


# ---- hidden (residual) width ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["tiny", "tiny-wavlm", "pre-ln"])
def test_thin_students_analytic_costs_match_the_built_student(layout):
    teacher = random_teacher(pre_ln_tiny() if layout == "pre-ln" else PRESETS[layout]())
    rng = random.Random(layout)
    for _ in range(5):
        config = random_config(teacher.config, rng, thin=True)
        architecture = config.student_architecture(teacher.config)
        student = compress(teacher, config)
        assert student.config.embed_dim == config.hidden
        assert without_head_index(student.config) == without_head_index(architecture)
        # The reference: torch's FlopCounterMode on the built student and its parameter count.
        assert count_macs(architecture, num_samples=SAMPLES).total == count_macs_of_model(student, SAMPLES)
        assert count_params_from_config(architecture) == count_params(student)
        rebuilt = build_encoder(student.config)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
            k: v.shape for k, v in student.state_dict().items()
        }


@pytest.mark.parametrize("layout", ["tiny", "tiny-wavlm", "pre-ln"])
def test_keeping_every_residual_channel_reproduces_the_teacher(layout, batch):
    """keep_hidden with every channel (identity importance) is a no-op, the weight-norm rescale included."""
    from sslc.compress.slicing import keep_hidden

    teacher = random_teacher(pre_ln_tiny() if layout == "pre-ln" else PRESETS[layout]())
    state = teacher.state_dict()
    keep_hidden(state, torch.arange(teacher.config.embed_dim), teacher.config.pos_conv_groups)
    student = build_encoder(teacher.config)
    student.load_state_dict(state, strict=True)
    assert max_difference(hidden(student.eval(), batch), hidden(teacher, batch)) < TOL


def test_thin_student_keeps_the_teachers_weights_on_the_kept_channels(batch):
    """Slicing is exact where it can be: the positional conv of a thin student equals the teacher's conv on the
    kept channels (weight norm rescaled), and the feature projection's outputs are the kept rows."""
    teacher = random_teacher(tiny_config())
    config = CompressionConfig.identity(teacher.config)
    config.hidden = 32
    student = compress(teacher, config)
    kept = slicing_top_k_per_group(teacher)
    with torch.no_grad():
        features = torch.randn(1, 50, 64, generator=torch.Generator().manual_seed(4))
        full = teacher.pos_conv(features)[..., kept]
        thin = student.pos_conv(features[..., kept])
        # The thin conv reads only kept inputs: zero the pruned inputs in the teacher's for the reference.
        zeroed = features.clone()
        mask = torch.ones(64, dtype=torch.bool)
        mask[kept] = False
        zeroed[..., mask] = 0.0
        reference = teacher.pos_conv(zeroed)[..., kept]
        assert float((thin - reference).abs().max()) < TOL
        assert float((full - reference).abs().max()) > 1e-3  # the pruned channels did matter
        assert torch.equal(
            student.feature_projection.projection.weight, teacher.feature_projection.projection.weight[kept]
        )


def slicing_top_k_per_group(teacher):
    from sslc.compress.slicing import top_k_per_group

    (scores,) = importance_scores(teacher, "hidden-l1")
    return top_k_per_group(scores, 32, teacher.config.pos_conv_groups)


def test_thin_wavlm_gate_reads_the_kept_channels_at_their_teacher_positions(batch):
    """A WavLM student at the teacher's width but with its gate told the channels moved equals the teacher
    with the unkept channels zeroed: checked through the gate on a layer input with zeros at pruned channels."""
    teacher = random_teacher(tiny_config("wavlm"))
    config = CompressionConfig.identity(teacher.config)
    config.hidden = 48
    student = compress(teacher, config)
    kept = torch.tensor(student.config.residual_index)
    assert len(kept) == 48 and kept.unique().numel() == 48
    x = torch.randn(2, 30, 48, generator=torch.Generator().manual_seed(5))
    wide = torch.zeros(2, 30, 64).index_copy(2, kept, x)
    bias = teacher.relative_position(30)
    with torch.no_grad():
        ours = student.layers[0].attention._gated_bias(x, bias)
        reference = teacher.layers[0].attention._gated_bias(wide, bias)
    assert float((ours - reference).abs().max()) < TOL


def test_hidden_data_scores_follow_activation_size(data, tmp_path):
    """Scale one residual channel of the feature projection up: its data score rises to the top, the score is
    cached, and a thin student is built from it."""
    rebuilt = random_teacher(pre_ln_tiny())  # pre-LN: the raw residual stream reaches the hidden states
    with torch.no_grad():
        rebuilt.feature_projection.projection.weight[7] *= 50.0
        rebuilt.feature_projection.projection.bias[7] *= 50.0
    (scores,) = importance_scores(rebuilt, "hidden-data", data, tmp_path)
    assert int(scores.argmax()) == 7
    (cached,) = importance_scores(rebuilt, "hidden-data", data, tmp_path)
    assert torch.equal(scores, cached)
    config = CompressionConfig.identity(rebuilt.config)
    config.hidden, config.hidden_importance = 16, "data"
    student = compress(rebuilt, config, data=data, cache_dir=tmp_path)
    assert student.config.embed_dim == 16


def test_hidden_width_is_checked():
    config = CompressionConfig.identity(tiny_config())
    for bad in (30, 0, 128, 8.0):
        config.hidden = bad
        with pytest.raises(ConfigError, match="hidden"):
            config.validate(tiny_config())
    config.hidden = 32
    config.attn_rank = [40, None]
    with pytest.raises(ConfigError, match="attn_rank must be 1..32"):
        config.validate(tiny_config())


def test_a_config_without_hidden_keeps_its_old_dict_and_a_thin_one_round_trips():
    config = CompressionConfig.identity(tiny_config())
    assert "hidden" not in config.to_dict() and "hidden_importance" not in config.to_dict()
    config.hidden, config.hidden_importance = 32, "data"
    assert CompressionConfig.from_json(config.to_json()) == config


# ---- low rank -----------------------------------------------------------------------------------------------
def test_low_rank_full_rank_reproduces_and_error_falls_with_rank():
    torch.manual_seed(0)
    linear = nn.Linear(48, 32)
    x = torch.randn(10, 48)
    with torch.no_grad():
        assert float((low_rank_linear(linear, 32)(x) - linear(x)).abs().max()) <= TOL
        errors = []
        for rank in (1, 4, 8, 16, 24, 32):
            down, up = factorize(linear.weight, rank)
            assert down.shape == (rank, 48) and up.shape == (32, rank)
            errors.append(float((up @ down - linear.weight).norm()))
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    with pytest.raises(ValueError, match="rank must be 1..32"):
        factorize(linear.weight, 33)
    tall = linear.weight.detach().T.contiguous()  # wide weights are factored through their transpose: both orientations
    down, up = factorize(tall, 32)
    assert down.shape == (32, 32) and up.shape == (48, 32)
    assert float((up @ down - tall).abs().max()) <= TOL


def test_low_rank_layer_error_falls_with_rank(tiny, batch):
    reference = hidden(tiny, batch)[-1]
    errors = []
    for rank in (4, 16, 64):
        config = CompressionConfig.identity(tiny.config)
        config.attn_rank = [rank, rank]
        config.ffn_rank = [rank, rank]
        errors.append(float((hidden(compress(tiny, config), batch)[-1] - reference).norm()))
    assert errors == sorted(errors, reverse=True) and errors[-1] <= 1e-3


# ---- sparsity and int8 ---------------------------------------------------------------------------------------
def test_sparsity_fraction_is_achieved(tiny, batch):
    config = CompressionConfig.first_n(tiny.config, 2)
    config.sparsity = 0.6
    config.ffn_rank = [16, None]
    student = compress(tiny, config)
    weights = [linear.weight for linear in prunable_linears(student)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(0.6, abs=0.01)
    assert count_nonzero_params(student) <= count_params(student) - zeros
    assert torch.isfinite(hidden(student, batch)[-1]).all()


def test_int8_runs_and_stays_close_to_float(tiny, batch):
    config = CompressionConfig.identity(tiny.config)
    config.attn_rank = [16, None]
    float_student = compress(tiny, config)
    config.quantize = "int8"
    student = compress(tiny, config)
    assert any("quantized" in type(m).__module__ for m in student.modules())
    a, b = hidden(student, batch)[-1], hidden(float_student, batch)[-1]
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).mean() > 0.95


# ---- importance scores and their cache -------------------------------------------------------------------------
def test_data_driven_scores_differ_from_l1_and_are_cached(teacher, data, tmp_path, spy):
    config = CompressionConfig.identity(teacher.config)
    config.heads = [2, 2]
    config.ffn = [64, 64]
    config.conv_channels = [16] * 7
    config.head_importance = config.ffn_importance = config.conv_importance = "data"
    computed = spy(importance_module, "data_scores")
    before = len(computed)
    first = compress(teacher, config, data=data, cache_dir=tmp_path)
    assert len(computed) == before + 1  # one pass scores heads, units and channels together
    second = compress(teacher, config, data=iter(data), cache_dir=tmp_path)
    assert len(computed) == before + 1  # the second call read the cache
    assert len(list(tmp_path.glob("*.pt"))) == 1 and not list(tmp_path.glob("*.tmp"))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    for kind, l1 in (("head", head_scores_l1), ("ffn", ffn_scores_l1), ("conv", conv_scores_l1)):
        scores = importance_scores(teacher, f"{kind}-data", data, tmp_path)
        weights = l1(teacher)
        assert all(torch.isfinite(s).all() and s.abs().sum() > 0 for s in scores)
        assert any(not torch.allclose(s, w / w.norm(), atol=1e-3) for s, w in zip(scores, weights))
    assert len(computed) == before + 1
    other = [(w * 0.5, n) for w, n in data]
    importance_scores(teacher, "head-data", other, ImportanceCache(tmp_path))
    assert len(computed) == before + 2  # different data, different entry


def test_diagonal_and_layer_scores(teacher, data, tmp_path, spy):
    computed = spy(importance_module, "head_scores_diagonal")
    before = len(computed)
    diagonal = importance_scores(teacher, "head-diagonal", data, tmp_path)
    assert importance_scores(teacher, "head-diagonal", data, tmp_path)[0].tolist() == diagonal[0].tolist()
    assert len(computed) == before + 1
    assert all(((s > 0) & (s <= 1)).all() and s.shape == (4,) for s in diagonal)
    assert all(not layer.attention.record_attention for layer in teacher.layers)
    config = CompressionConfig.identity(teacher.config)
    config.heads = [1, 1]
    config.head_importance = "diagonal"
    student = compress(teacher, config, data=data, cache_dir=tmp_path)
    assert len(computed) == before + 1
    assert student.config.layers[0].heads == 1

    layers = importance_scores(teacher, "layer", data)
    assert layers.shape == (2,) and (layers > 0).all()
    chosen = CompressionConfig.by_importance(teacher, 1, data, cache_dir=tmp_path)
    assert chosen.layers == [int(layers.argmax())]


def test_data_methods_need_data(tiny):
    config = CompressionConfig.identity(tiny.config)
    config.heads = [2, 2]
    config.head_importance = "data"
    with pytest.raises(ConfigError, match="head-data importance needs scoring data"):
        compress(tiny, config)
    with pytest.raises(ConfigError, match="scoring data must be"):
        compress(tiny, config, data=[torch.randn(3)])
    config.heads = [4, 4]
    compress(tiny, config)  # nothing pruned: no scores, no data needed


# ---- config: constructors, validation, JSON -------------------------------------------------------------------
def test_layer_selection_helpers():
    base = PRESETS["hubert-base"]()
    assert CompressionConfig.first_n(base, 3).layers == [0, 1, 2]
    assert CompressionConfig.evenly_spaced(base, 4).layers == [2, 5, 8, 11]
    assert CompressionConfig.evenly_spaced(base, 1).layers == [11]
    assert CompressionConfig.evenly_spaced(base, 12).layers == list(range(12))
    config = CompressionConfig.evenly_spaced(base, 4)
    assert config.heads == [12] * 4 and config.ffn == [3072] * 4 and config.conv_channels == [512] * 7
    with pytest.raises(ConfigError, match="number of kept layers must be 1..12, got 0"):
        CompressionConfig.first_n(base, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"heads": [-1, 4]}, "layer 0: heads must be 0..4 (0 removes the attention block), got -1"),
        ({"heads": [4, 5]}, "layer 1: heads must be 0..4 (0 removes the attention block), got 5"),
        ({"ffn": [129, 128]}, "layer 0: ffn must be 0..128 (0 removes the FFN block), got 129"),
        ({"heads": [0, 4], "ffn": [128, 0]}, None),
        ({"heads": [1, 4], "attn_rank": [17, None]}, "layer 0: attn_rank must be 1..16"),
        ({"ffn_rank": [None, 65]}, "layer 1: ffn_rank must be 1..64"),
        ({"ffn_rank": [0, None]}, "layer 0: ffn_rank must be 1..64"),
        ({"layers": [], "heads": [], "ffn": [], "attn_rank": [], "ffn_rank": []}, "layers must not be empty"),
        ({"layers": [0, 7]}, "unknown teacher layer index 7"),
        ({"layers": [1, 0]}, "layers must be strictly increasing"),
        ({"layers": [1], "heads": [4], "ffn": [128], "attn_rank": [None], "ffn_rank": [None]}, None),
        ({"heads": [4]}, "heads needs one entry per kept layer (2), got 1"),
        ({"conv_channels": [32] * 6}, "conv_channels needs one entry per CNN layer (7), got 6"),
        ({"conv_channels": [32, 32, 0, 32, 32, 32, 32]}, "conv layer 2: channels must be 1..32, got 0"),
        ({"sparsity": 1.0}, "sparsity must be a number in [0, 1), got 1.0"),
        ({"quantize": "int4"}, "quantize must be one of none, int8, got 'int4'"),
        ({"head_importance": "random"}, "head_importance must be one of l1, data, diagonal"),
        ({"heads": [4.0, 4]}, "heads must be a list of integers"),
    ],
)
def test_invalid_configs_raise_clear_errors(tiny, change, message):
    config = dataclasses.replace(CompressionConfig.identity(tiny.config), **change)
    if message is None:
        config.validate(tiny.config)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate(tiny.config)
    with pytest.raises(UserError):  # compress and student_architecture refuse it the same way
        compress(tiny, config)
    with pytest.raises(ConfigError):
        config.student_architecture(tiny.config)


def test_error_names_the_teacher_layer_when_it_differs():
    base = PRESETS["hubert-base"]()
    config = CompressionConfig.evenly_spaced(base, 4)
    config.heads[3] = 13
    message = "layer 3 (teacher layer 11): heads must be 0..12 (0 removes the attention block), got 13"
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate(base)


def test_json_round_trip():
    base = PRESETS["wavlm-base"]()
    config = CompressionConfig.evenly_spaced(base, 3)
    config.attn_rank = [64, None, 128]
    config.conv_channels[0] = 256
    config.sparsity, config.quantize, config.head_importance = 0.25, "int8", "diagonal"
    assert CompressionConfig.from_json(config.to_json()) == config
    assert CompressionConfig.from_dict(config.to_dict()) == config
    architecture = config.student_architecture(base)
    assert architecture.layers[0].ranks == {"q": 64, "k": 64, "v": 64, "out": 64}
    assert type(architecture).from_json(architecture.to_json()) == architecture
    with pytest.raises(ConfigError, match="unknown field.*colour"):
        CompressionConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ConfigError, match="missing field.*ffn"):
        CompressionConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "ffn"})
    with pytest.raises(ConfigError, match="not valid JSON"):
        CompressionConfig.from_json("{")


# ---- importance as a search knob -----------------------------------------------------------------------------
IMPORTANCE_SPACE = {"heads": {"min": 1, "max": "all"}, "ffn_keep": [0.5, 1.0], "conv_keep": [0.5, 1.0],
                    "head_importance": ["l1", "data", "diagonal"], "ffn_importance": ["l1", "data"],
                    "conv_importance": "data"}


def test_a_searched_importance_criterion_is_a_trial_param_and_a_fixed_one_is_not():
    import optuna

    from sslc.spaces import SearchSpace

    space = SearchSpace.from_dict(IMPORTANCE_SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        config = space.suggest(trial, tiny_config())
        assert trial.params["head_importance"] == config.head_importance in ("l1", "data", "diagonal")
        assert trial.params["ffn_importance"] == config.ffn_importance
        assert "conv_importance" not in trial.params and config.conv_importance == "data"  # fixed: not searched
        seen.add(config.head_importance)
        study.tell(trial, 0.0)
    assert seen == {"l1", "data", "diagonal"}


@pytest.mark.parametrize("head", ["l1", "data", "diagonal"])
@pytest.mark.parametrize("ffn", ["l1", "data"])
def test_every_importance_criterion_builds_a_valid_student(tiny, data, batch, tmp_path, head, ffn):
    config = CompressionConfig.identity(tiny.config)
    config.heads, config.ffn, config.conv_channels = [2, 3], [40, 24], [c // 2 for c in config.conv_channels]
    config.head_importance, config.ffn_importance, config.conv_importance = head, ffn, "data"
    student = compress(tiny, config, data=data, cache_dir=tmp_path)
    assert [layer.heads for layer in student.config.layers] == [2, 3]
    assert count_params(student) == count_params_from_config(config.student_architecture(tiny.config))
    states = hidden(student, batch)
    assert len(states) == 3 and all(torch.isfinite(s).all() for s in states)


def test_the_hidden_knob_is_a_trial_param_rounded_to_the_positional_conv_groups():
    import optuna

    from sslc.spaces import SearchSpace

    space = SearchSpace.from_dict({"hidden": {"min": 0.5, "max": 1.0, "step": 0.125},
                                   "hidden_importance": ["l1", "data"]})
    teacher = tiny_config()  # 64 wide, 4 groups
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    widths = set()
    for _ in range(16):
        trial = study.ask()
        config = space.suggest(trial, teacher)
        width = config.width(teacher)
        assert width == round(trial.params["hidden"] * 64 / 4) * 4 and width % 4 == 0
        assert (config.hidden is None) == (width == 64)
        assert trial.params["hidden_importance"] == config.hidden_importance
        widths.add(width)
        study.tell(trial, 0.0)
    assert widths == {32, 40, 48, 56, 64}
    assert space.smallest(teacher).hidden == 32 and space.largest(teacher).hidden is None
    assert "hidden" in space.to_dict() and "hidden" not in SearchSpace.from_dict({}).to_dict()
