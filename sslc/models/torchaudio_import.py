"""Import torchaudio's wav2vec 2.0 / HuBERT / WavLM models (`torchaudio.models.Wav2Vec2Model`) into our encoder.

torchaudio's module tree, which the conversion reads (architecture from module attributes, weights by name):

    feature_extractor.conv_layers[i].conv / .layer_norm        (GroupNorm on layer 0 only, or LayerNorm on each)
    encoder.feature_projection.layer_norm / .projection
    encoder.transformer.pos_conv_embed.conv                     (weight-normed grouped conv)
    encoder.transformer.layer_norm
    encoder.transformer.layers[i].attention.{q,k,v,out}_proj   (wav2vec 2.0 / HuBERT)
    encoder.transformer.layers[i].attention.attention           (WavLM: an nn.MultiheadAttention, q/k/v stacked in
                                                                 in_proj_weight / in_proj_bias, plus out_proj)
    encoder.transformer.layers[i].attention.rel_attn_embed      (WavLM, layer 0), gru_rel_pos_linear, gru_rel_pos_const
    encoder.transformer.layers[i].layer_norm / .final_layer_norm / .feed_forward.{intermediate,output}_dense
    aux                                                          (the optional ASR head, not imported)

The conversion renames torchaudio's keys to transformers' names and reuses `hf_import`'s strict mapping. torchaudio
is imported lazily and only for bundles: converting a model instance needs nothing from torchaudio itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import UserError, first_line, one_line
from .config import ConvLayerSpec, EncoderConfig, LayerSpec, RelativePositionSpec
from .encoder import SpeechEncoder
from .hf_import import convert_state_dict, load_converted

_FAMILY_PREFIXES = (
    ("HUBERT", "hubert"),
    ("WAVLM", "wavlm"),
    ("WAV2VEC2", "wav2vec2"),
    ("VOXPOPULI", "wav2vec2"),
)
_INSTALL_HINT = (
    "torchaudio is not installed (or does not import); install it (pip install 'sslc[torchaudio]') "
    "or give a transformers checkpoint instead"
)

# torchaudio's key -> transformers' key (then hf_import's rules map it to ours).
_TA_TO_HF: list[tuple[re.Pattern, str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"feature_extractor\.(.*)", r"feature_extractor.\1"),
        (r"encoder\.feature_projection\.(.*)", r"feature_projection.\1"),
        (r"encoder\.transformer\.pos_conv_embed\.(.*)", r"encoder.pos_conv_embed.\1"),
        (r"encoder\.transformer\.layer_norm\.(.*)", r"encoder.layer_norm.\1"),
        (
            r"encoder\.transformer\.layers\.(\d+)\.attention\.attention\.out_proj\.(weight|bias)",
            r"encoder.layers.\1.attention.out_proj.\2",
        ),
        (r"encoder\.transformer\.layers\.(.*)", r"encoder.layers.\1"),
    ]
]
_IN_PROJ = re.compile(r"encoder\.transformer\.layers\.(\d+)\.attention\.attention\.in_proj_(weight|bias)")


def import_torchaudio():
    """The torchaudio module, or `UserError` when it is missing or broken (e.g. a build for another torch)."""
    try:
        import torchaudio
    except Exception as error:  # ImportError, or OSError / RuntimeError from a mismatched binary build
        raise UserError(
            f"{_INSTALL_HINT} ({one_line(error)})"
        ) from None
    return torchaudio


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare `Wav2Vec2Model` inside the wrappers bundles return (ASR bundles wrap it as `.model`; HuBERT
    pre-training models hold it as `.wav2vec2`)."""
    for _ in range(3):
        if hasattr(model, "feature_extractor") and hasattr(model, "encoder"):
            return model
        inner = [getattr(model, name, None) for name in ("model", "wav2vec2")]
        inner = [m for m in inner if isinstance(m, nn.Module)]
        if not inner:
            break
        model = inner[0]
    raise UserError(
        f"{type(model).__name__} is not a torchaudio Wav2Vec2Model (no feature_extractor / encoder)"
    )


def config_from_torchaudio(model: nn.Module, family: str | None = None) -> EncoderConfig:
    """The `EncoderConfig` of a torchaudio `Wav2Vec2Model`, read from its modules.

    torchaudio does not record whether a model is wav2vec 2.0 or HuBERT (their encoders are the same); `family`
    says which, and defaults to "wavlm" for a model with relative position attention, else "wav2vec2".
    """
    model = _unwrap(model)
    try:
        blocks = list(model.feature_extractor.conv_layers)
        first_norm = blocks[0].layer_norm
        if isinstance(first_norm, nn.GroupNorm):
            extractor_norm = "group"
        elif isinstance(first_norm, nn.LayerNorm):
            extractor_norm = "layer"
        else:
            raise UserError("torchaudio models without a norm in the first conv layer are not supported")
        conv_layers = [
            ConvLayerSpec(b.conv.out_channels, b.conv.kernel_size[0], b.conv.stride[0]) for b in blocks
        ]
        projection = model.encoder.feature_projection
        transformer = model.encoder.transformer
        pos_conv = transformer.pos_conv_embed.conv
        layers = list(transformer.layers)
        attention0 = layers[0].attention if layers else None
        relative = None
        if attention0 is not None and getattr(attention0, "rel_attn_embed", None) is not None:
            if not getattr(attention0, "gru_rel_pos", True):
                raise UserError(
                    "torchaudio WavLM models without gated relative position (gru_rel_pos) are not supported"
                )
            relative = RelativePositionSpec(
                attention0.num_buckets, attention0.max_distance, attention0.num_heads
            )
        specs = [
            LayerSpec(
                heads=layer.attention.num_heads, ffn_dim=layer.feed_forward.intermediate_dense.out_features
            )
            for layer in layers
        ]
        head_dim = attention0.head_dim if attention0 is not None else 64
        config = EncoderConfig(
            family=family or ("wavlm" if relative is not None else "wav2vec2"),
            conv_layers=conv_layers,
            embed_dim=projection.projection.out_features,
            head_dim=head_dim,
            layers=specs,
            extractor_norm=extractor_norm,
            conv_bias=blocks[0].conv.bias is not None,
            layer_norm_first=bool(layers[0].layer_norm_first) if layers else False,
            projection_layer_norm=getattr(projection, "layer_norm", None) is not None,
            pos_conv_kernel=pos_conv.kernel_size[0],
            pos_conv_groups=pos_conv.groups,
            layer_norm_eps=float(transformer.layer_norm.eps),
            relative_position=relative,
        )
        return config.validate()
    except (AttributeError, IndexError, TypeError, ValueError) as error:
        raise UserError(f"unsupported torchaudio model {type(model).__name__}: {error}") from None


def hf_keys_from_torchaudio(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchaudio's state dict with transformers' key names (WavLM's stacked q/k/v projections split in three).
    The ASR head (`aux.*`) is dropped; a key with no counterpart is kept as is, so the strict import rejects it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("aux."):
            continue
        stacked = _IN_PROJ.fullmatch(key)
        if stacked:
            layer, kind = stacked.groups()
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"encoder.layers.{layer}.attention.{name}.{kind}"] = part
            continue
        for pattern, replacement in _TA_TO_HF:
            if pattern.fullmatch(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value
    return out


def encoder_from_torchaudio_model(model: nn.Module, family: str | None = None) -> SpeechEncoder:
    """Our `SpeechEncoder` with the architecture and weights of a torchaudio `Wav2Vec2Model` (wav2vec 2.0, HuBERT or
    WavLM; see `config_from_torchaudio` for `family`)."""
    model = _unwrap(model)
    config = config_from_torchaudio(model, family)
    state = convert_state_dict(hf_keys_from_torchaudio(model.state_dict()), what="torchaudio")
    return load_converted(config, state, "torchaudio")


def bundle_names(torchaudio) -> list[str]:
    """Names of torchaudio's wav2vec 2.0 / HuBERT / WavLM pipeline bundles."""
    pipelines = torchaudio.pipelines
    kind = getattr(pipelines, "Wav2Vec2Bundle", None)
    names = []
    for name in dir(pipelines):
        value = getattr(pipelines, name)
        if name.isupper() and (isinstance(value, kind) if kind is not None else hasattr(value, "get_model")):
            names.append(name)
    return sorted(names)


def family_of_bundle(name: str) -> str | None:
    return next((family for prefix, family in _FAMILY_PREFIXES if name.upper().startswith(prefix)), None)


def load_torchaudio_bundle(name: str) -> SpeechEncoder:
    """Our encoder from a torchaudio pipeline bundle such as "HUBERT_BASE" (its weights are downloaded or read from
    torch's hub cache by torchaudio). Note that some bundles normalise the waveform before the model; that step
    belongs to the data pipeline and is not part of the encoder."""
    torchaudio = import_torchaudio()
    names = bundle_names(torchaudio)
    if name not in names:
        raise UserError(f"unknown torchaudio bundle {name!r}; known: {', '.join(names)}")
    try:
        model = getattr(torchaudio.pipelines, name).get_model()
    except Exception as error:
        raise UserError(f"could not load torchaudio bundle {name}: {first_line(error)}") from None
    return encoder_from_torchaudio_model(model, family_of_bundle(name))
