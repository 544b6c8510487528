"""The elastic student: one set of teacher-sized weights holding every student size, each a prefix of the next.

`make_elastic(teacher)` re-orders the teacher's weights by importance (the scores of `importance.py`): the heads
and FFN units of every layer, the channels of every CNN layer, and the residual (hidden) channels. A size choice,
written as a `CompressionConfig`, then selects a sub-network by slicing leading rows and columns (views of the
shared weights, no copy), and a smaller size is a prefix of a larger one. Each sub-network computes exactly what
`compress(teacher, config)` builds with the same importance criteria: re-ordering heads, units and channels is
function-preserving, and the first k of an importance order are its top k.

Residual channels: the positional conv is grouped, so a width w keeps the first w / groups channels of each group
(as `slicing.top_k_per_group` does). To make that a prefix too, the stream is interleaved: position
j * groups + g holds group g's j-th most important channel (`residual_order` names each position's teacher
channel). The positional conv regroups its input and output (an activation reshape); its weight is computed from
the weight-norm parameters once per forward, then sliced (the weights `compress` gives, see `slicing.keep_hidden`).

What is elastic: depth (the first n layers, each with an exit), heads, FFN units, CNN channels and hidden width.
What is not: low-rank ranks, sparsity and int8 (a config with them is refused), and which layers are kept (always
the first n). Outputs are reported in the order of the student `extract` builds (each kept channel at its teacher
rank, ascending: the order `compress` keeps), so a sub-network and its extracted student return the same tensors.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sslc.models import EncoderConfig, EncoderOutput, SpeechEncoder, build_encoder
from sslc.models.encoder import SplitState, check_split, check_until, frame_mask_for

from . import slicing
from .compress import slice_student
from .config import (
    CONV_IMPORTANCE,
    FFN_IMPORTANCE,
    HEAD_IMPORTANCE,
    HIDDEN_IMPORTANCE,
    CompressionConfig,
    ConfigError,
)
from .importance import as_batches, importance_scores

KINDS = ("head", "ffn", "conv", "hidden")
_CHOICES = {"head": HEAD_IMPORTANCE, "ffn": FFN_IMPORTANCE, "conv": CONV_IMPORTANCE, "hidden": HIDDEN_IMPORTANCE}
_CONFIG_FIELDS = {"head": "head_importance", "ffn": "ffn_importance", "conv": "conv_importance",
                  "hidden": "hidden_importance"}


def resolve_criteria(criteria: dict | None, data_given: bool) -> dict[str, str]:
    """The importance criterion of each kind ("head", "ffn", "conv", "hidden"): "data" for all when scoring
    data is given, else "l1"; `criteria` overrides some or all of them."""
    out = dict.fromkeys(KINDS, "data" if data_given else "l1")
    criteria = dict(criteria or {})
    unknown = sorted(set(criteria) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown importance kind(s) {', '.join(unknown)}; expected {', '.join(KINDS)}")
    out.update(criteria)
    for kind, name in out.items():
        if name not in _CHOICES[kind]:
            raise ConfigError(f"{kind} importance must be one of {', '.join(_CHOICES[kind])}, got {name!r}")
    return out


def importance_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices from the most to the least important (ties: lower index first): its first k are `slicing.top_k`."""
    return torch.sort(-scores.float(), stable=True).indices


def interleave(per_group: torch.Tensor) -> torch.Tensor:
    """[groups, size] within-group orders -> the teacher channel at each interleaved stream position."""
    groups, size = per_group.shape
    return (per_group + torch.arange(groups)[:, None] * size).t().reshape(-1)


def deinterleave(residual_order: torch.Tensor, groups: int) -> torch.Tensor:
    """The inverse of `interleave`: [groups, size] within-group orders."""
    size = residual_order.numel() // groups
    return residual_order.view(size, groups).t() - torch.arange(groups, device=residual_order.device)[:, None] * size


@dataclass(frozen=True)
class Sizes:
    """A sub-network: the first `depth` layers, the first heads / units / channels of each, `width` channels."""

    depth: int
    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    conv: tuple[int, ...]
    width: int


# ---- permuting a teacher-layout state dict ----------------------------------------------------------------------
def _axes(spec: EncoderConfig) -> list[tuple[str, int, tuple]]:
    """(state key, dim, axis) for every dim that an importance order permutes (the positional conv aside)."""
    axes = []
    convs = len(spec.conv_layers)
    for i in range(convs):
        block = f"feature_extractor.blocks.{i}."
        axes += [(block + name, 0, ("conv", i)) for name in ("conv.weight", "conv.bias", "norm.weight", "norm.bias")]
        if i + 1 < convs:
            axes.append((f"feature_extractor.blocks.{i + 1}.conv.weight", 1, ("conv", i)))
    last = ("conv", convs - 1)
    axes += [("feature_projection.layer_norm.weight", 0, last), ("feature_projection.layer_norm.bias", 0, last),
             ("feature_projection.projection.weight", 1, last)]
    hidden = ("hidden",)
    axes += [(key, 0, hidden) for key in ("feature_projection.projection.weight", "feature_projection.projection.bias",
                                          "layer_norm.weight", "layer_norm.bias")]
    for i in range(spec.num_layers):
        att, ff = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
        for name in ("q_proj", "k_proj", "v_proj"):
            axes += [(f"{att}{name}.weight", 0, ("rows", i)), (f"{att}{name}.bias", 0, ("rows", i)),
                     (f"{att}{name}.weight", 1, hidden)]
        axes += [(f"{att}out_proj.weight", 1, ("rows", i)), (f"{att}out_proj.weight", 0, hidden),
                 (f"{att}out_proj.bias", 0, hidden), (f"{att}gru_rel_pos_const", 1, ("head", i))]
        axes += [(f"{ff}fc1.weight", 0, ("ffn", i)), (f"{ff}fc1.bias", 0, ("ffn", i)), (f"{ff}fc1.weight", 1, hidden),
                 (f"{ff}fc2.weight", 1, ("ffn", i)), (f"{ff}fc2.weight", 0, hidden), (f"{ff}fc2.bias", 0, hidden)]
        for norm in ("layer_norm", "final_layer_norm"):
            axes += [(f"layers.{i}.{norm}.weight", 0, hidden), (f"layers.{i}.{norm}.bias", 0, hidden)]
    return axes


_POS_V = "pos_conv.conv.parametrizations.weight.original1"
_POS_BIAS = "pos_conv.conv.bias"


def _permute_state(state: dict, spec: EncoderConfig, orders: dict, inverse: bool = False) -> dict:
    """A copy of `state` with every importance axis permuted: position p of an axis takes the teacher's entry
    orders[...][p] (or, with `inverse`, back to the teacher's layout). The positional conv is permuted within each
    group, on its outputs and on its inputs; its weight-norm magnitude g (a norm over all but the kernel dim) is
    unchanged by that."""

    def directed(order: torch.Tensor) -> torch.Tensor:
        order = order.cpu()
        return torch.argsort(order) if inverse else order

    index = {("hidden",): directed(orders["residual"])}
    for i, order in enumerate(orders["head"]):
        index[("head", i)] = directed(order)
        index[("rows", i)] = directed(slicing.head_rows(order.cpu(), spec.head_dim))
    for kind in ("ffn", "conv"):
        for i, order in enumerate(orders[kind]):
            index[(kind, i)] = directed(order)
    state = dict(state)
    for key, dim, axis in _axes(spec):
        if key in state:
            state[key] = state[key].index_select(dim, index[axis].to(state[key].device))
    groups = spec.pos_conv_groups
    per_group = deinterleave(orders["residual"].cpu(), groups)
    if inverse:
        per_group = torch.argsort(per_group, dim=1)
    v = state[_POS_V]
    size = v.shape[1]
    blocks = v.view(groups, size, size, v.shape[2])
    per_group = per_group.to(v.device)
    state[_POS_V] = torch.stack([blocks[g][per_group[g]][:, per_group[g]] for g in range(groups)]).reshape(v.shape)
    offsets = (per_group + torch.arange(groups, device=v.device)[:, None] * size).reshape(-1)
    state[_POS_BIAS] = state[_POS_BIAS].index_select(0, offsets.to(state[_POS_BIAS].device))
    return state


def _check_teacher(spec: EncoderConfig) -> None:
    if any(layer.ranks for layer in spec.layers):
        raise ConfigError("an elastic student needs a full-rank teacher: this one has low-rank layers")
    if spec.residual_index is not None:
        raise ConfigError("an elastic student needs a teacher of full hidden width: this one is a thin student")


# ---- the elastic student ----------------------------------------------------------------------------------------
class ElasticStudent(nn.Module):
    """Teacher-sized weights in importance order; `elastic(waveforms, lengths, config=...)` runs the sub-network
    `config` selects (None: the whole model, which is the teacher). Build it with `make_elastic`.

    `weights` is the storage: a `SpeechEncoder` of the teacher's shape whose parameters are re-ordered (calling it
    directly is meaningless: its residual channels are interleaved, see the module docstring). The importance
    orders are buffers (`head_order_{i}`, `unit_order_{i}`, `conv_order_{i}`, `residual_order`: the teacher index
    at each position), so the state dict restores the whole model.
    """

    def __init__(self, config: EncoderConfig, criteria: dict | None = None):
        super().__init__()
        _check_teacher(config)
        self.config = config
        self.criteria = resolve_criteria(criteria, data_given=False)
        self.weights = build_encoder(config)
        for i, layer in enumerate(config.layers):
            self.register_buffer(f"head_order_{i}", torch.arange(layer.heads))
            self.register_buffer(f"unit_order_{i}", torch.arange(layer.ffn_dim))
        for i, conv in enumerate(config.conv_layers):
            self.register_buffer(f"conv_order_{i}", torch.arange(conv.channels))
        groups = config.pos_conv_groups
        identity = torch.arange(config.embed_dim // groups).repeat(groups, 1)
        self.register_buffer("residual_order", interleave(identity))

    # ---- orders ------------------------------------------------------------------------------------------------
    def orders(self) -> dict:
        """{"head", "ffn", "conv": [order per layer], "residual": order}: the teacher index at each position."""
        return {
            "head": [getattr(self, f"head_order_{i}") for i in range(self.config.num_layers)],
            "ffn": [getattr(self, f"unit_order_{i}") for i in range(self.config.num_layers)],
            "conv": [getattr(self, f"conv_order_{i}") for i in range(len(self.config.conv_layers))],
            "residual": self.residual_order,
        }

    def set_orders(self, orders: dict) -> None:
        for i, order in enumerate(orders["head"]):
            getattr(self, f"head_order_{i}").copy_(order)
        for i, order in enumerate(orders["ffn"]):
            getattr(self, f"unit_order_{i}").copy_(order)
        for i, order in enumerate(orders["conv"]):
            getattr(self, f"conv_order_{i}").copy_(order)
        self.residual_order.copy_(orders["residual"])

    @torch.no_grad()
    def load_teacher_state(self, state: dict) -> None:
        """Take the weights of a teacher-layout state dict, re-ordered by this model's orders."""
        self.weights.load_state_dict(_permute_state(state, self.config, self.orders()), strict=True)

    @torch.no_grad()
    def teacher_state(self) -> dict[str, torch.Tensor]:
        """The shared weights put back in the teacher's layout (a copy): the teacher itself until trained."""
        return _permute_state(self.weights.state_dict(), self.config, self.orders(), inverse=True)

    # ---- size choices ------------------------------------------------------------------------------------------
    def sizes(self, config: CompressionConfig | None = None) -> Sizes:
        """The sub-network `config` selects; `ConfigError` (one line) if it does not fit or is not elastic."""
        spec = self.config
        if config is None:
            config = CompressionConfig.identity(spec)
        config.validate(spec)
        problems = []
        depth = len(config.layers)
        if config.layers != list(range(depth)):
            problems.append(f"an elastic student keeps the first n layers: layers must be 0..{depth - 1}, "
                            f"got {config.layers}")
        if any(r is not None for r in config.attn_rank + config.ffn_rank):
            problems.append("low-rank ranks are not elastic: attn_rank and ffn_rank must be null")
        if config.sparsity:
            problems.append("sparsity is not elastic: it must be 0")
        if config.quantize != "none":
            problems.append("int8 is not elastic: quantize must be none")
        pruned = {
            "head": any(h < spec.layers[t].heads for h, t in zip(config.heads, config.layers)),
            "ffn": any(f < spec.layers[t].ffn_dim for f, t in zip(config.ffn, config.layers)),
            "conv": any(c < conv.channels for c, conv in zip(config.conv_channels, spec.conv_layers)),
            "hidden": config.width(spec) < spec.embed_dim,
        }
        for kind, field in _CONFIG_FIELDS.items():
            if pruned[kind] and getattr(config, field) != self.criteria[kind]:
                problems.append(f"{field} must be {self.criteria[kind]!r} (the order this elastic student was "
                                f"built with), got {getattr(config, field)!r}")
        if problems:
            raise ConfigError("not a sub-network of this elastic student: " + "; ".join(problems))
        return Sizes(depth, tuple(config.heads), tuple(config.ffn), tuple(config.conv_channels), config.width(spec))

    def config_for(self, depth: int | None = None, heads=None, ffn=None, conv_channels=None,
                   hidden: int | None = None) -> CompressionConfig:
        """The `CompressionConfig` of a size choice, with this model's importance criteria. An int for heads /
        ffn applies to every kept layer; anything left out is the teacher's full size."""
        spec = self.config
        depth = spec.num_layers if depth is None else depth
        config = CompressionConfig.first_n(spec, depth)
        if heads is not None:
            config.heads = [heads] * depth if isinstance(heads, int) else list(heads)
        if ffn is not None:
            config.ffn = [ffn] * depth if isinstance(ffn, int) else list(ffn)
        if conv_channels is not None:
            config.conv_channels = list(conv_channels)
        config.hidden = None if hidden is None or hidden == spec.embed_dim else hidden
        for kind, field in _CONFIG_FIELDS.items():
            setattr(config, field, self.criteria[kind])
        return config.validate(spec)

    def residual_index(self, config: CompressionConfig | None = None) -> list[int]:
        """The teacher channel of each output channel of the sub-network (ascending: what `extract` and
        `compress` give as `residual_index`)."""
        width = self.sizes(config).width
        return sorted(self.residual_order[:width].tolist())

    # ---- the sub-network's weights (views) ---------------------------------------------------------------------
    def sub_state(self, config: CompressionConfig | Sizes | None = None) -> dict[str, torch.Tensor]:
        """The weights a sub-network uses, keyed like a `SpeechEncoder`'s state dict: every one a view of the
        shared weights starting at the same storage offset (the positional conv, computed per forward, aside)."""
        s = config if isinstance(config, Sizes) else self.sizes(config)
        spec, w = self.config, s.width
        full = dict(self.weights.named_parameters())
        out = {}
        previous = 1
        for i, channels in enumerate(s.conv):
            block = f"feature_extractor.blocks.{i}."
            out[block + "conv.weight"] = full[block + "conv.weight"][:channels, :previous]
            for name in ("conv.bias", "norm.weight", "norm.bias"):
                if block + name in full:
                    out[block + name] = full[block + name][:channels]
            previous = channels
        for name in ("feature_projection.layer_norm.weight", "feature_projection.layer_norm.bias"):
            if name in full:
                out[name] = full[name][:previous]
        out["feature_projection.projection.weight"] = full["feature_projection.projection.weight"][:w, :previous]
        for name in ("feature_projection.projection.bias", "layer_norm.weight", "layer_norm.bias"):
            out[name] = full[name][:w]
        if "relative_position.embedding.weight" in full:
            out["relative_position.embedding.weight"] = full["relative_position.embedding.weight"]
        for i in range(s.depth):
            inner, units = s.heads[i] * spec.head_dim, s.ffn[i]
            att, ff = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
            for name in ("q_proj", "k_proj", "v_proj"):
                out[f"{att}{name}.weight"] = full[f"{att}{name}.weight"][:inner, :w]
                out[f"{att}{name}.bias"] = full[f"{att}{name}.bias"][:inner]
            out[f"{att}out_proj.weight"] = full[f"{att}out_proj.weight"][:w, :inner]
            out[f"{att}out_proj.bias"] = full[f"{att}out_proj.bias"][:w]
            if spec.relative_position is not None:
                out[f"{att}gru_rel_pos_const"] = full[f"{att}gru_rel_pos_const"][:, : s.heads[i]]
                out[f"{att}gru_rel_pos_linear.weight"] = full[f"{att}gru_rel_pos_linear.weight"]
                out[f"{att}gru_rel_pos_linear.bias"] = full[f"{att}gru_rel_pos_linear.bias"]
            out[f"{ff}fc1.weight"] = full[f"{ff}fc1.weight"][:units, :w]
            out[f"{ff}fc1.bias"] = full[f"{ff}fc1.bias"][:units]
            out[f"{ff}fc2.weight"] = full[f"{ff}fc2.weight"][:w, :units]
            out[f"{ff}fc2.bias"] = full[f"{ff}fc2.bias"][:w]
            for norm in ("layer_norm", "final_layer_norm"):
                for part in ("weight", "bias"):
                    out[f"layers.{i}.{norm}.{part}"] = full[f"layers.{i}.{norm}.{part}"][:w]
        return out

    # ---- the functional forward --------------------------------------------------------------------------------
    def _dropout(self) -> float:
        return self.config.dropout if self.training else 0.0

    def _pos_conv(self, x: torch.Tensor, width: int) -> torch.Tensor:
        """The grouped positional conv on an interleaved stream [B, T, width] (regrouped in and out)."""
        spec = self.config
        groups, size, kernel = spec.pos_conv_groups, spec.embed_dim // spec.pos_conv_groups, spec.pos_conv_kernel
        kept = width // groups
        module = self.weights.pos_conv
        weight = module.conv.weight  # g * v / ||v||: the teacher's effective weights, in the stored order
        weight = weight.view(groups, size, size, kernel)[:, :kept, :kept].reshape(width, kept, kernel)
        bias = module.conv.bias.view(groups, size)[:, :kept].reshape(width)
        batch, frames, _ = x.shape
        grouped = x.view(batch, frames, kept, groups).transpose(2, 3).reshape(batch, frames, width)
        y = F.conv1d(grouped.transpose(1, 2), weight, bias, padding=kernel // 2, groups=groups)
        if module.trim:
            y = y[:, :, : -module.trim]
        return F.gelu(y).view(batch, groups, kept, -1).permute(0, 3, 2, 1).reshape(batch, frames, width)

    def _embed(self, p: dict, s: Sizes, waveforms: torch.Tensor, lengths: torch.Tensor | None):
        spec, w = self.config, s.width
        x = waveforms.unsqueeze(1)
        for i, (block, channels) in enumerate(zip(self.weights.feature_extractor.blocks, s.conv)):
            name = f"feature_extractor.blocks.{i}."
            x = F.conv1d(x, p[name + "conv.weight"], p.get(name + "conv.bias"), stride=block.stride)
            if block.norm_kind == "group":
                x = F.group_norm(x, channels, p[name + "norm.weight"], p[name + "norm.bias"], block.norm.eps)
            elif block.norm_kind == "layer":
                x = F.layer_norm(x.transpose(1, 2), (channels,), p[name + "norm.weight"], p[name + "norm.bias"],
                                 block.norm.eps).transpose(1, 2)
            x = F.gelu(x)
        features = x.transpose(1, 2)
        frame_lengths = mask = None
        if lengths is not None:
            frame_lengths = self.weights.feature_extractor.output_lengths(lengths.to(features.device))
            mask = frame_mask_for(frame_lengths, features.shape[1])
        if spec.projection_layer_norm:
            features = F.layer_norm(features, (s.conv[-1],), p["feature_projection.layer_norm.weight"],
                                    p["feature_projection.layer_norm.bias"], spec.layer_norm_eps)
        x = F.linear(features, p["feature_projection.projection.weight"], p["feature_projection.projection.bias"])
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)
        x = x + self._pos_conv(x, w)
        if not spec.layer_norm_first:
            x = F.layer_norm(x, (w,), p["layer_norm.weight"], p["layer_norm.bias"], spec.layer_norm_eps)
        return F.dropout(x, self._dropout(), self.training), frame_lengths, mask

    def _position_bias(self, frames: int) -> torch.Tensor | None:
        relative = self.weights.relative_position
        return relative(frames) if relative is not None else None

    def _gate_heads(self, i: int, heads: int) -> torch.Tensor:
        """Rows of the relative position table (teacher heads) of the first `heads` heads of layer i."""
        order = getattr(self, f"head_order_{i}")[:heads]
        sources = self.config.layers[i].head_sources()
        return torch.tensor(sources, device=order.device)[order]

    def _attention(self, p, s, i, x, mask, position_bias):
        spec = self.config
        heads, head_dim = s.heads[i], spec.head_dim
        att = f"layers.{i}.attention."
        batch, frames, width = x.shape

        def project(name):
            y = F.linear(x, p[f"{att}{name}.weight"], p[f"{att}{name}.bias"])
            return y.view(batch, frames, heads, head_dim).transpose(1, 2)

        q, k, v = project("q_proj"), project("k_proj"), project("v_proj")
        bias = None
        if position_bias is not None:  # WavLM: the gate reads each head's slice of the teacher-width stream
            rows = self._gate_heads(i, heads)
            stream = x.new_zeros(batch, frames, spec.embed_dim).index_copy(2, self.residual_order[:width], x)
            chunks = stream.view(batch, frames, -1, head_dim)[:, :, rows].permute(0, 2, 1, 3)
            proj = F.linear(chunks, p[f"{att}gru_rel_pos_linear.weight"], p[f"{att}gru_rel_pos_linear.bias"])
            gate_a, gate_b = torch.sigmoid(proj.view(*proj.shape[:-1], 2, 4).sum(-1)).chunk(2, dim=-1)
            gate = gate_a * (gate_b * p[f"{att}gru_rel_pos_const"] - 1.0) + 2.0
            bias = gate * position_bias[rows].unsqueeze(0)
        if mask is not None:
            pad = torch.zeros(batch, 1, 1, frames, dtype=x.dtype, device=x.device)
            pad = pad.masked_fill(~mask[:, None, None, :], float("-inf"))
            bias = pad if bias is None else bias + pad
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self._dropout())
        context = context.transpose(1, 2).reshape(batch, frames, heads * head_dim)
        return F.linear(context, p[f"{att}out_proj.weight"], p[f"{att}out_proj.bias"])

    def _feed_forward(self, p, i, x):
        ff = f"layers.{i}.feed_forward."
        hidden = F.gelu(F.linear(x, p[f"{ff}fc1.weight"], p[f"{ff}fc1.bias"]))
        hidden = F.dropout(hidden, self._dropout(), self.training)
        return F.linear(hidden, p[f"{ff}fc2.weight"], p[f"{ff}fc2.bias"])

    def _layer(self, p, s, i, x, mask, position_bias):
        spec, w = self.config, s.width

        def norm(name, t):
            return F.layer_norm(t, (w,), p[f"layers.{i}.{name}.weight"], p[f"layers.{i}.{name}.bias"],
                                spec.layer_norm_eps)

        def drop(t):
            return F.dropout(t, self._dropout(), self.training)

        if spec.layer_norm_first:
            x = x + drop(self._attention(p, s, i, norm("layer_norm", x), mask, position_bias))
            return x + drop(self._feed_forward(p, i, norm("final_layer_norm", x)))
        x = norm("layer_norm", x + drop(self._attention(p, s, i, x, mask, position_bias)))
        return norm("final_layer_norm", x + drop(self._feed_forward(p, i, x)))

    def _reporter(self, width: int):
        """Stream order -> output order (each kept channel at its teacher rank, ascending)."""
        index = torch.argsort(self.residual_order[:width])
        return lambda x: x.index_select(-1, index)

    def run(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | None = None,
        until_layer: int | None = None,
        config: CompressionConfig | None = None,
        keep_states: bool = False,
    ) -> SplitState:
        """The first part of a split forward of the sub-network `config`: front end and its first `until_layer`
        layers. The `SplitState`'s stream is in this model's interleaved order (resume it here, same config)."""
        s = self.sizes(config)
        until = check_until(until_layer, s.depth)
        p = self.sub_state(s)
        x, frame_lengths, mask = self._embed(p, s, waveforms, lengths)
        position_bias = self._position_bias(x.shape[1]) if until else None
        report = self._reporter(s.width)
        states = [report(x)] if keep_states else None
        for i in range(until):
            x = self._layer(p, s, i, x, mask, position_bias)
            if keep_states:
                states.append(report(x))
        return SplitState(x, frame_lengths, until, states)

    def resume(self, split: SplitState, from_layer: int | None = None,
               config: CompressionConfig | None = None) -> EncoderOutput:
        """The rest of a split forward of the sub-network `config` (the one `run` used)."""
        s = self.sizes(config)
        check_split(split, from_layer, s.depth, s.width)
        p = self.sub_state(s)
        x = split.stream
        mask = frame_mask_for(split.frame_lengths, x.shape[1])
        position_bias = self._position_bias(x.shape[1]) if split.layer < s.depth else None
        report = self._reporter(s.width)
        states = list(split.states) if split.states is not None else [report(x)]
        for i in range(split.layer, s.depth):
            x = self._layer(p, s, i, x, mask, position_bias)
            states.append(report(x))
        last = states[-1]
        if self.config.layer_norm_first:
            last = report(F.layer_norm(x, (s.width,), p["layer_norm.weight"], p["layer_norm.bias"],
                                       self.config.layer_norm_eps))
        return EncoderOutput(states, split.frame_lengths, last)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                config: CompressionConfig | None = None) -> EncoderOutput:
        """The sub-network `config` selects on waveforms [B, S] (lengths [B] in samples for padded batches): the
        same `EncoderOutput` as `extract(config)` gives."""
        return self.resume(self.run(waveforms, lengths, 0, config, keep_states=True), config=config)

    # ---- extraction ----------------------------------------------------------------------------------------------
    def kept(self, config: CompressionConfig | None = None) -> dict:
        """The teacher indices a sub-network keeps, ascending: {"head", "ffn", "conv": [per layer], "residual"}."""
        s = self.sizes(config)
        orders = self.orders()

        def first(order, k):
            return order[:k].sort().values.cpu()

        return {
            "head": [first(orders["head"][i], h) for i, h in enumerate(s.heads)],
            "ffn": [first(orders["ffn"][i], f) for i, f in enumerate(s.ffn)],
            "conv": [first(order, c) for order, c in zip(orders["conv"], s.conv)],
            "residual": first(orders["residual"], s.width),
        }

    @torch.no_grad()
    def extract(self, config: CompressionConfig | None = None) -> SpeechEncoder:
        """An ordinary student (its own copy of the weights) of the sub-network `config`, in eval mode: the model
        `compress(teacher, config)` builds (bit for bit until the shared weights are trained)."""
        config = config if config is not None else CompressionConfig.identity(self.config)
        kept = self.kept(config)
        residual = kept["residual"] if config.width(self.config) < self.config.embed_dim else None
        state = self.teacher_state()
        student = slice_student(state, self.config, config, kept["head"], kept["ffn"], kept["conv"], residual)
        parameter = next(self.weights.parameters())
        return student.to(device=parameter.device, dtype=parameter.dtype).eval()


def make_elastic(teacher: SpeechEncoder, data=None, cache_dir=None, criteria: dict | None = None) -> ElasticStudent:
    """The elastic student of `teacher` (in the teacher's mode, device and dtype): its weights re-ordered by the
    importance `criteria` ({"head", "ffn", "conv", "hidden"} -> method; default "data" for all with scoring
    `data`, else "l1"). data / cache_dir: as for `compress`."""
    spec = teacher.config
    _check_teacher(spec)
    if data is not None:
        data = as_batches(data)
    criteria = resolve_criteria(criteria, data is not None)
    with contextlib.ExitStack() as stack:
        if cache_dir is None and data is not None:  # the head, FFN and conv data scores are one computation
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sslc-elastic-"))
        scores = {kind: importance_scores(teacher, f"{kind}-{method}", data, cache_dir)
                  for kind, method in criteria.items()}
    groups = spec.pos_conv_groups
    (hidden,) = scores["hidden"]
    orders = {
        "head": [importance_order(s) for s in scores["head"]],
        "ffn": [importance_order(s) for s in scores["ffn"]],
        "conv": [importance_order(s) for s in scores["conv"]],
        "residual": interleave(torch.stack([importance_order(s) for s in hidden.view(groups, -1)])),
    }
    elastic = ElasticStudent(spec.copy(), criteria)
    elastic.set_orders(orders)
    elastic.load_teacher_state({k: v.detach().cpu() for k, v in teacher.state_dict().items()})
    parameter = next(teacher.parameters())
    return elastic.to(device=parameter.device, dtype=parameter.dtype).train(teacher.training)
