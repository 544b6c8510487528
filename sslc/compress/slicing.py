"""Structured pruning as physical slicing of a teacher's state dict: depth, heads, FFN units, conv channels and
hidden (residual) channels.

Every operator takes the indices to keep (in the teacher's order) and returns smaller tensors, so the student
has no masks: its parameters, MACs and latency all drop, and `build_encoder(student_config)` has exactly the
shapes of the sliced state.
"""

from __future__ import annotations

import torch

State = dict[str, torch.Tensor]


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores (ties: lower index first), returned in ascending (original) order."""
    order = torch.sort(-scores.float(), stable=True).indices[:k]
    return order.sort().values


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of a [heads * head_dim, ...] projection that belong to `heads`."""
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)


def _select(state: State, key: str, dim: int, index: torch.Tensor) -> None:
    if key in state:
        state[key] = state[key].index_select(dim, index.to(state[key].device))


def keep_layers(state: State, layers: list[int]) -> State:
    """Depth: keep teacher layers `layers` (renumbered 0..n-1 in that order), drop the others."""
    kept = {f"layers.{t}.": f"layers.{i}." for i, t in enumerate(layers)}
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        prefix = ".".join(key.split(".")[:2]) + "."
        if prefix in kept:
            out[kept[prefix] + key[len(prefix) :]] = value
    return out


def keep_heads(state: State, prefix: str, heads: torch.Tensor, head_dim: int) -> None:
    """Keep `heads` of the attention at `prefix` (e.g. "layers.0.attention."): q/k/v rows, out columns, and
    WavLM's per-head gate constant (its gate linear acts on one head's slice and is shared by all heads)."""
    rows = head_rows(heads, head_dim)
    for name in ("q_proj", "k_proj", "v_proj"):
        _select(state, f"{prefix}{name}.weight", 0, rows)
        _select(state, f"{prefix}{name}.bias", 0, rows)
    _select(state, f"{prefix}out_proj.weight", 1, rows)
    _select(state, f"{prefix}gru_rel_pos_const", 1, heads)


def keep_units(state: State, prefix: str, units: torch.Tensor) -> None:
    """Keep FFN `units` of the feed-forward at `prefix`: fc1 rows and bias, fc2 columns."""
    _select(state, f"{prefix}fc1.weight", 0, units)
    _select(state, f"{prefix}fc1.bias", 0, units)
    _select(state, f"{prefix}fc2.weight", 1, units)


def drop_removed_blocks(state: State, layer: int, heads: int, ffn: int, layer_norm_first: bool) -> None:
    """Delete the weights of layer `layer`'s removed blocks (0 heads: attention; 0 units: FFN), and in a pre-LN
    layer the removed block's input LayerNorm (`sslc.models.components.EncoderLayer` has neither)."""
    removed = []
    if heads == 0:
        removed += ["attention."] + (["layer_norm."] if layer_norm_first else [])
    if ffn == 0:
        removed += ["feed_forward."] + (["final_layer_norm."] if layer_norm_first else [])
    prefixes = tuple(f"layers.{layer}.{name}" for name in removed)
    for key in [k for k in state if prefixes and k.startswith(prefixes)]:
        del state[key]


def keep_channels(state: State, channels: list[torch.Tensor]) -> None:
    """Keep `channels[i]` of CNN layer i: its conv's outputs, bias and norm, the next conv's input slice, and
    for the last conv the feature projection's LayerNorm and input columns."""
    for i, kept in enumerate(channels):
        block = f"feature_extractor.blocks.{i}."
        _select(state, f"{block}conv.weight", 0, kept)
        for name in ("conv.bias", "norm.weight", "norm.bias"):
            _select(state, f"{block}{name}", 0, kept)
        if i + 1 < len(channels):
            _select(state, f"feature_extractor.blocks.{i + 1}.conv.weight", 1, kept)
    last = channels[-1]
    _select(state, "feature_projection.layer_norm.weight", 0, last)
    _select(state, "feature_projection.layer_norm.bias", 0, last)
    _select(state, "feature_projection.projection.weight", 1, last)


def top_k_per_group(scores: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    """The top k scores taken evenly from `groups` equal contiguous blocks (k // groups each), ascending."""
    size, per_group = scores.numel() // groups, k // groups
    return torch.cat([top_k(scores[g * size : (g + 1) * size], per_group) + g * size for g in range(groups)])


def keep_hidden(state: State, channels: torch.Tensor, groups: int) -> None:
    """Keep residual `channels` everywhere the residual stream is read or written: the feature projection's
    outputs, the positional conv (per group; `channels` holds the same count from each of its `groups`), every
    LayerNorm, q/k/v and fc1 inputs, out-projection and fc2 outputs. WavLM's gate is placed by
    `EncoderConfig.residual_index`, not sliced.

    The positional conv is weight-normed over its kernel positions (weight = g * v / ||v||, norm over all but
    dim 2): g is rescaled by ||v_kept|| / ||v|| so the kept weights equal the teacher's exactly.
    """
    width = state["layer_norm.weight"].shape[0]
    outputs = ["feature_projection.projection.weight", "feature_projection.projection.bias", "pos_conv.conv.bias",
               "layer_norm.weight", "layer_norm.bias"]
    inputs = []
    for key in state:
        if not key.startswith("layers."):
            continue
        name = key.split(".", 2)[2]
        if name in ("attention.q_proj.weight", "attention.k_proj.weight", "attention.v_proj.weight",
                    "feed_forward.fc1.weight"):
            inputs.append(key)
        elif name in ("attention.out_proj.weight", "attention.out_proj.bias", "feed_forward.fc2.weight",
                      "feed_forward.fc2.bias") or "layer_norm." in name:
            outputs.append(key)
    for key in outputs:
        _select(state, key, 0, channels)
    for key in inputs:
        _select(state, key, 1, channels)
    g_key, v_key = "pos_conv.conv.parametrizations.weight.original0", "pos_conv.conv.parametrizations.weight.original1"
    v = state[v_key]
    size = width // groups
    kept_in_group = (channels % size).view(groups, -1)  # [groups, kept per group]: positions inside the group
    sliced = torch.stack([v[channels[g * kept_in_group.shape[1] : (g + 1) * kept_in_group.shape[1]]]
                          .index_select(1, kept_in_group[g].to(v.device)) for g in range(groups)])
    sliced = sliced.reshape(-1, kept_in_group.shape[1], v.shape[2])
    norm = v.norm(dim=(0, 1), keepdim=True)
    state[g_key] = state[g_key] * sliced.norm(dim=(0, 1), keepdim=True) / norm.clamp_min(1e-12)
    state[v_key] = sliced
