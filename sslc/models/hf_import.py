"""Import transformers' HuBERT / wav2vec 2.0 / WavLM models into our `SpeechEncoder`.

`config_from_hf` turns a transformers config into an `EncoderConfig`; `encoder_from_hf_model` builds the matching
`SpeechEncoder` and copies every weight into it. The copy is strict: a weight of the transformers encoder that has
no place in ours, or a weight of ours that the transformers model does not provide, is an error, so a converted
encoder computes exactly what the transformers model computes (the fidelity tests compare every hidden state).

transformers is imported lazily: it is only needed when a transformers model is converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from ..errors import UserError, first_line
from .config import ConvLayerSpec, EncoderConfig, LayerSpec, RelativePositionSpec
from .encoder import SpeechEncoder

SUPPORTED_MODEL_TYPES = ("hubert", "wav2vec2", "wavlm")

# Weights of the transformers base model that inference does not use: the learned mask embedding of SpecAugment.
HF_IGNORED = ("masked_spec_embed",)

_POS_CONV_G = "pos_conv.conv.parametrizations.weight.original0"
_POS_CONV_V = "pos_conv.conv.parametrizations.weight.original1"
# Not a key of ours: a positional conv stored without weight norm, split into magnitude and direction on conversion.
_POS_CONV_PLAIN = "pos_conv.conv.weight"

# transformers' key (in the base model) -> ours. Every rule matches a whole key.
_HF_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(p), r)
    for p, r in [
        (
            r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)",
            r"feature_extractor.blocks.\1.conv.\2",
        ),
        (
            r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)",
            r"feature_extractor.blocks.\1.norm.\2",
        ),
        (r"feature_projection\.(layer_norm|projection)\.(weight|bias)", r"feature_projection.\1.\2"),
        (r"encoder\.pos_conv_embed\.conv\.bias", "pos_conv.conv.bias"),
        (r"encoder\.pos_conv_embed\.conv\.(?:parametrizations\.weight\.original0|weight_g)", _POS_CONV_G),
        (r"encoder\.pos_conv_embed\.conv\.(?:parametrizations\.weight\.original1|weight_v)", _POS_CONV_V),
        (r"encoder\.pos_conv_embed\.conv\.weight", _POS_CONV_PLAIN),
        (r"encoder\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
        (r"encoder\.layers\.0\.attention\.rel_attn_embed\.weight", "relative_position.embedding.weight"),
        (
            r"encoder\.layers\.(\d+)\.attention\.(q_proj|k_proj|v_proj|out_proj|gru_rel_pos_linear)\.(weight|bias)",
            r"layers.\1.attention.\2.\3",
        ),
        (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const", r"layers.\1.attention.gru_rel_pos_const"),
        (r"encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm)\.(weight|bias)", r"layers.\1.\2.\3"),
        (
            r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)",
            r"layers.\1.feed_forward.fc1.\2",
        ),
        (
            r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)",
            r"layers.\1.feed_forward.fc2.\2",
        ),
    ]
]


def _few(keys, limit: int = 4) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# ---- config --------------------------------------------------------------------------------------------------
def _unsupported_features(cfg) -> list[str]:
    problems = []
    for name in ("hidden_act", "feat_extract_activation"):
        act = getattr(cfg, name, "gelu")
        if act != "gelu":
            problems.append(f"{name}={act!r} (only 'gelu' is supported)")
    if getattr(cfg, "add_adapter", False):
        problems.append("add_adapter=True (output adapters are not supported)")
    if getattr(cfg, "adapter_attn_dim", None) is not None:
        problems.append("adapter_attn_dim is set (attention adapters are not supported)")
    if getattr(cfg, "conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm=True (a batch-normed positional conv is not supported)")
    if cfg.feat_extract_norm not in ("group", "layer"):
        problems.append(f"feat_extract_norm={cfg.feat_extract_norm!r} (expected 'group' or 'layer')")
    if cfg.hidden_size % cfg.num_attention_heads:
        problems.append(f"hidden_size {cfg.hidden_size} is not divisible by {cfg.num_attention_heads} heads")
    if not len(cfg.conv_dim) == len(cfg.conv_kernel) == len(cfg.conv_stride):
        problems.append("conv_dim, conv_kernel and conv_stride have different lengths")
    return problems


def config_from_hf(hf_config) -> EncoderConfig:
    """The `EncoderConfig` of a transformers `HubertConfig` / `Wav2Vec2Config` / `WavLMConfig`.

    Raises `UserError` for another model type or a feature our encoder does not implement (non-GELU activations,
    adapters, a batch-normed positional conv).
    """
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(
            f"unsupported model_type {model_type!r}: expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    problems = _unsupported_features(hf_config)
    if problems:
        raise UserError(f"unsupported {model_type} config: " + "; ".join(problems))
    heads = hf_config.num_attention_heads
    relative = None
    if model_type == "wavlm":
        relative = RelativePositionSpec(hf_config.num_buckets, hf_config.max_bucket_distance, heads)
    # HuBERT can drop the LayerNorm in front of the feature projection; wav2vec 2.0 and WavLM always have it.
    projection_layer_norm = (
        bool(getattr(hf_config, "feat_proj_layer_norm", True)) if model_type == "hubert" else True
    )
    config = EncoderConfig(
        family=model_type,
        conv_layers=[
            ConvLayerSpec(int(c), int(k), int(s))
            for c, k, s in zip(hf_config.conv_dim, hf_config.conv_kernel, hf_config.conv_stride)
        ],
        embed_dim=hf_config.hidden_size,
        head_dim=hf_config.hidden_size // heads,
        layers=[
            LayerSpec(heads=heads, ffn_dim=hf_config.intermediate_size)
            for _ in range(hf_config.num_hidden_layers)
        ],
        extractor_norm=hf_config.feat_extract_norm,
        conv_bias=bool(hf_config.conv_bias),
        layer_norm_first=bool(hf_config.do_stable_layer_norm),
        projection_layer_norm=projection_layer_norm,
        pos_conv_kernel=hf_config.num_conv_pos_embeddings,
        pos_conv_groups=hf_config.num_conv_pos_embedding_groups,
        layer_norm_eps=float(hf_config.layer_norm_eps),
        relative_position=relative,
    )
    try:
        return config.validate()
    except ValueError as error:
        raise UserError(f"unsupported {model_type} config: {first_line(error)}") from None


# ---- weights -------------------------------------------------------------------------------------------------
def hf_key_to_ours(key: str, rules: list[tuple[re.Pattern, str]] = _HF_RULES) -> str | None:
    """Our name for a transformers weight (None when no rule matches); the export builds its inverse from this,
    so both directions read one table."""
    for pattern, replacement in rules:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return None


def convert_state_dict(
    source: Mapping[str, torch.Tensor],
    rules: list[tuple[re.Pattern, str]] = _HF_RULES,
    ignored: Callable[[str], bool] = lambda key: False,
    what: str = "transformers",
) -> dict[str, torch.Tensor]:
    """Rename `source`'s keys to ours with `rules`; a key that no rule matches and `ignored` does not accept is an
    error. A positional conv stored without weight norm is split into the weight-norm magnitude and direction."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in source.items():
        ours = hf_key_to_ours(key, rules)
        if ours is not None:
            out[ours] = value
        elif not ignored(key):
            unknown.append(key)
    if unknown:
        raise UserError(f"the {what} model has weights our encoder has no place for: {_few(unknown)}")
    plain = out.pop(_POS_CONV_PLAIN, None)
    if plain is not None and _POS_CONV_G not in out:
        out[_POS_CONV_G] = torch.norm_except_dim(plain, 2, 2)  # weight = g * v / ||v|| holds with v = weight
        out[_POS_CONV_V] = plain
    return out


def load_converted(config: EncoderConfig, state_dict: Mapping[str, torch.Tensor], what: str) -> SpeechEncoder:
    """Build a `SpeechEncoder` for `config` and load `state_dict` strictly (every key, every shape)."""
    encoder = SpeechEncoder(config)
    ours = encoder.state_dict()
    missing = [k for k in ours if k not in state_dict]
    unexpected = [k for k in state_dict if k not in ours]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise UserError(f"the {what} weights do not match the encoder config: " + "; ".join(parts))
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}"
        for k, v in state_dict.items()
        if tuple(v.shape) != tuple(ours[k].shape)
    ]
    if wrong:
        raise UserError(f"the {what} weights do not match the encoder config: shape of {_few(wrong, 3)}")
    with torch.no_grad():
        encoder.load_state_dict({k: v.detach().to(torch.float32) for k, v in state_dict.items()}, strict=True)
    return encoder


def base_hf_model(hf_model):
    """The `HubertModel` / `Wav2Vec2Model` / `WavLMModel` inside a transformers model (itself, or a head's base)."""
    base = getattr(hf_model, "base_model", hf_model)
    if not all(hasattr(base, name) for name in ("config", "feature_extractor", "encoder")):
        raise UserError(
            f"{type(hf_model).__name__} is not a transformers HuBERT / wav2vec 2.0 / WavLM model "
            "(expected e.g. HubertModel, Wav2Vec2ForCTC, WavLMModel)"
        )
    return base


def encoder_from_hf_model(hf_model) -> SpeechEncoder:
    """Our `SpeechEncoder` with the architecture and weights of a transformers HuBERT / wav2vec 2.0 / WavLM model
    (a base model, or a head such as `HubertForCTC` / `Wav2Vec2ForPreTraining`, whose base model is taken)."""
    base = base_hf_model(hf_model)
    config = config_from_hf(base.config)
    if getattr(base, "adapter", None) is not None:
        raise UserError("transformers models with an output adapter (add_adapter=True) are not supported")
    state = convert_state_dict(base.state_dict(), ignored=lambda key: key in HF_IGNORED)
    return load_converted(config, state, "transformers")
