"""Parameter counts: of a built model, its non-zero entries, and analytically from an `EncoderConfig`."""

from __future__ import annotations

import torch
from torch import nn

from sslc.models.config import EncoderConfig, LayerSpec

from .macs import RELATIVE_GATE_OUTPUTS, format_count


def count_params(model: nn.Module) -> int:
    """Every parameter entry of a built model (shared parameters once; buffers not included)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Parameter entries that are not exactly zero (what unstructured pruning leaves); a tensor under a
    `torch.nn.utils.prune` mask (`X_orig` with its buffer `X_mask`) counts as the masked tensor it computes."""
    buffers = dict(model.named_buffers())
    total = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            mask = buffers.get(name.removesuffix("_orig") + "_mask") if name.endswith("_orig") else None
            total += int(torch.count_nonzero(param if mask is None else param * mask))
    return total


def linear_params(in_features: int, out_features: int, rank: int | None = None, bias: bool = True) -> int:
    """Parameters of `make_linear(in, out, rank, bias)`; a low-rank linear keeps its bias on the up factor."""
    weights = in_features * out_features if rank is None else in_features * rank + rank * out_features
    return weights + (out_features if bias else 0)


def count_layer_params_from_config(config: EncoderConfig, layer: LayerSpec | int) -> int:
    """Parameters of one Transformer layer: attention (with WavLM's gate), FFN and its two LayerNorms.

    A removed block (0 heads, 0 FFN units) has none; a pre-LN layer loses that block's input LayerNorm too."""
    spec = config.layers[layer] if isinstance(layer, int) else layer
    embed, inner, ranks = config.embed_dim, spec.heads * config.head_dim, spec.ranks
    total = 0
    if spec.heads:
        total += sum(linear_params(embed, inner, ranks.get(name)) for name in ("q", "k", "v"))
        total += linear_params(inner, embed, ranks.get("out"))
        if config.relative_position is not None:
            # gru_rel_pos_linear (head_dim -> 8, with bias) and gru_rel_pos_const [1, heads, 1, 1]
            total += linear_params(config.head_dim, RELATIVE_GATE_OUTPUTS) + spec.heads
    if spec.ffn_dim:
        total += linear_params(embed, spec.ffn_dim, ranks.get("fc1"))
        total += linear_params(spec.ffn_dim, embed, ranks.get("fc2"))
    if config.layer_norm_first:
        norms = bool(spec.heads) + bool(spec.ffn_dim)
    else:
        norms = 2  # post-LN: layer_norm and final_layer_norm sit on the residual stream, whatever is removed
    return total + norms * 2 * embed


def count_params_from_config(config: EncoderConfig) -> int:
    """Parameters of `build_encoder(config)`, counted from the config alone (equal to `count_params` of it)."""
    total, in_channels = 0, 1
    for i, conv in enumerate(config.conv_layers):
        total += conv.channels * in_channels * conv.kernel + (conv.channels if config.conv_bias else 0)
        if config.extractor_norm == "layer" or i == 0:  # LayerNorm on every conv, or GroupNorm on the first
            total += 2 * conv.channels
        in_channels = conv.channels
    embed = config.embed_dim
    if config.projection_layer_norm:
        total += 2 * config.conv_out_channels
    total += linear_params(config.conv_out_channels, embed)
    # Weight-normed positional conv (dim=2): g is [1, 1, kernel], v is the conv weight; plus the bias.
    kernel = config.pos_conv_kernel
    total += kernel + embed * (embed // config.pos_conv_groups) * kernel + embed
    total += 2 * embed  # the encoder's LayerNorm (before layer 0 for post-LN, after the last for pre-LN)
    if config.relative_position is not None:
        total += config.relative_position.num_buckets * config.relative_position.heads
    return total + sum(count_layer_params_from_config(config, spec) for spec in config.layers)


def format_params(n: float, unit: str | None = None, digits: int = 2) -> str:
    """Parameters for people: `format_params(94_370_944) == "94.37 M"`."""
    return format_count(n, unit, digits)
