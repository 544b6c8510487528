"""Building blocks of the wav2vec 2.0 / HuBERT / WavLM encoder, with every size set per layer.

Written in the spirit of torchaudio's wav2vec2 components (small composable modules), but unlike them each layer
takes its own head count, FFN width and low-rank ranks, which is what physically compressed students need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConvLayerSpec, LayerSpec, RelativePositionSpec


class LowRankLinear(nn.Module):
    """A linear map factorised as up(down(x)): in -> rank -> out, with the bias on the second factor."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def make_linear(in_features: int, out_features: int, rank: int | None = None, bias: bool = True) -> nn.Module:
    """A plain linear, or a low-rank one when `rank` is given."""
    if rank is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return LowRankLinear(in_features, out_features, rank, bias=bias)


# ---- convolutional front end ----------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """Conv1d -> optional norm -> GELU. `norm` is "group" (GroupNorm with a group per channel), "layer" or None."""

    def __init__(self, in_channels: int, spec: ConvLayerSpec, bias: bool, norm: str | None):
        super().__init__()
        self.kernel, self.stride = spec.kernel, spec.stride
        self.conv = nn.Conv1d(in_channels, spec.channels, spec.kernel, stride=spec.stride, bias=bias)
        self.norm_kind = norm
        if norm == "group":
            self.norm = nn.GroupNorm(spec.channels, spec.channels, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(spec.channels)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.norm(x)
        elif self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class FeatureExtractor(nn.Module):
    """Waveform [B, S] -> frames [B, C, T] through a stack of strided convolutions."""

    def __init__(self, specs: list[ConvLayerSpec], bias: bool, norm_mode: str):
        super().__init__()
        blocks, in_channels = [], 1
        for i, spec in enumerate(specs):
            norm = "layer" if norm_mode == "layer" else ("group" if i == 0 else None)
            blocks.append(ConvBlock(in_channels, spec, bias, norm))
            in_channels = spec.channels
        self.blocks = nn.ModuleList(blocks)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        x = waveforms.unsqueeze(1)
        for block in self.blocks:
            x = block(x)
        return x

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            lengths = torch.div(lengths - block.kernel, block.stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)


class FeatureProjection(nn.Module):
    """Conv features -> model width: optional LayerNorm, then a linear."""

    def __init__(self, in_features: int, embed_dim: int, layer_norm: bool, eps: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features, eps=eps) if layer_norm else None
        self.projection = nn.Linear(in_features, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return self.projection(x)


class ConvPositionalEmbedding(nn.Module):
    """Weight-normed grouped convolution over time that adds relative position information."""

    def __init__(self, embed_dim: int, kernel: int, groups: int):
        super().__init__()
        conv = nn.Conv1d(embed_dim, embed_dim, kernel, padding=kernel // 2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        # An even kernel with padding kernel//2 yields one extra frame, which is dropped to keep the length.
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


# ---- Transformer ----------------------------------------------------------------------------------------------
class RelativePositionBias(nn.Module):
    """WavLM's bucketed relative position bias table: returns [heads, T, T] for a sequence length T."""

    def __init__(self, spec: RelativePositionSpec):
        super().__init__()
        self.num_buckets, self.max_distance = spec.num_buckets, spec.max_distance
        self.embedding = nn.Embedding(spec.num_buckets, spec.heads)

    def buckets(self, length: int, device: torch.device) -> torch.Tensor:
        positions = torch.arange(length, device=device)
        relative = positions[None, :] - positions[:, None]
        half = self.num_buckets // 2  # one half of the buckets for each direction
        buckets = (relative > 0).long() * half
        distance = relative.abs()
        exact = half // 2  # distances below this get a bucket each; beyond, buckets grow logarithmically
        log_ratio = torch.log(distance.float() / exact) / math.log(self.max_distance / exact)
        far = (exact + log_ratio * (half - exact)).long().clamp(max=half - 1)
        return buckets + torch.where(distance < exact, distance, far)

    def forward(self, length: int) -> torch.Tensor:
        device = self.embedding.weight.device
        return self.embedding(self.buckets(length, device)).permute(2, 0, 1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with `heads` heads of `head_dim` each (inner width heads * head_dim).

    `context` is an identity hook point on the per-head context before the output projection, where importance
    scores read activations and gradients. Set `record_attention = True` to keep the attention maps of the last
    call in `last_attention` (computed explicitly then, since the fused kernel does not return them).
    """

    def __init__(self, embed_dim: int, spec: LayerSpec, head_dim: int, relative: bool, dropout: float = 0.0,
                 gate_channels: list[int] | None = None, gate_width: int | None = None):
        super().__init__()
        self.heads, self.head_dim, self.dropout = spec.heads, head_dim, dropout
        inner = spec.heads * head_dim
        ranks = spec.ranks
        self.q_proj = make_linear(embed_dim, inner, ranks.get("q"))
        self.k_proj = make_linear(embed_dim, inner, ranks.get("k"))
        self.v_proj = make_linear(embed_dim, inner, ranks.get("v"))
        self.out_proj = make_linear(inner, embed_dim, ranks.get("out"))
        self.context = nn.Identity()
        self.record_attention = False
        self.last_attention: torch.Tensor | None = None
        self.relative = relative
        if relative:
            # WavLM's gate: each head's slice of the layer input decides how much relative bias that head gets.
            self.register_buffer("head_index", torch.tensor(spec.head_sources(), dtype=torch.long), persistent=False)
            self.gru_rel_pos_linear = nn.Linear(head_dim, 8)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, spec.heads, 1, 1))
            # A thin student: where its channels sit in the teacher-width stream the gate reads (see
            # EncoderConfig.residual_index); None when the stream is the teacher's own.
            self.gate_width = gate_width
            if gate_channels is not None:
                self.register_buffer("gate_channels", torch.tensor(gate_channels, dtype=torch.long), persistent=False)
            else:
                self.gate_channels = None

    def _gated_bias(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        if self.gate_channels is not None:  # pruned residual channels read as zero
            x = x.new_zeros(batch, length, self.gate_width).index_copy(2, self.gate_channels, x)
            width = self.gate_width
        chunks = x.reshape(batch, length, width // self.head_dim, self.head_dim)[:, :, self.head_index]
        proj = self.gru_rel_pos_linear(chunks.permute(0, 2, 1, 3))  # [B, H, T, 8]
        gate_a, gate_b = torch.sigmoid(proj.view(*proj.shape[:-1], 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0  # [B, H, T, 1]
        return gate * position_bias[self.head_index].unsqueeze(0)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        bias = None
        if self.relative and position_bias is not None:
            bias = self._gated_bias(x, position_bias)
        if key_padding_mask is not None:
            pad = torch.zeros(batch, 1, 1, length, dtype=x.dtype, device=x.device)
            pad = pad.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
            bias = pad if bias is None else bias + pad
        dropout = self.dropout if self.training else 0.0
        if self.record_attention:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if bias is not None:
                scores = scores + bias
            weights = scores.softmax(-1)
            self.last_attention = weights.detach()
            context = F.dropout(weights, dropout, self.training) @ v
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        context = self.context(context.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))
        return self.out_proj(context)


class FeedForward(nn.Module):
    """fc1 -> GELU -> fc2 with `ffn_dim` hidden units; `activation` is a hook point on the hidden units."""

    def __init__(self, embed_dim: int, spec: LayerSpec, dropout: float = 0.0):
        super().__init__()
        self.fc1 = make_linear(embed_dim, spec.ffn_dim, spec.ranks.get("fc1"))
        self.fc2 = make_linear(spec.ffn_dim, embed_dim, spec.ranks.get("fc2"))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation(self.fc1(x))))


class EncoderLayer(nn.Module):
    """Attention + FFN with residuals; post-LN (base models) or pre-LN (`layer_norm_first`, large models).

    A layer with 0 heads has no attention block and one with 0 FFN units no FFN block (DPHuBERT's block removal):
    the block adds nothing to the residual, not even its output bias. As in DPHuBERT's components
    (`use_attention` / `use_feed_forward`), a post-LN layer still applies both LayerNorms, which sit on the
    residual stream; a pre-LN layer drops a removed block's input LayerNorm with it, which only that block read.
    """

    def __init__(self, embed_dim: int, spec: LayerSpec, head_dim: int, layer_norm_first: bool, eps: float,
                 relative: bool, dropout: float = 0.0, gate_channels: list[int] | None = None,
                 gate_width: int | None = None):
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.attention = (SelfAttention(embed_dim, spec, head_dim, relative, dropout, gate_channels, gate_width)
                          if spec.heads else None)
        self.feed_forward = FeedForward(embed_dim, spec, dropout) if spec.ffn_dim else None
        keep_norm = not layer_norm_first
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps) if keep_norm or spec.heads else None
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps) if keep_norm or spec.ffn_dim else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, key_padding_mask=None, position_bias=None):
        if self.layer_norm_first:
            if self.attention is not None:
                x = x + self.dropout(self.attention(self.layer_norm(x), key_padding_mask, position_bias))
            if self.feed_forward is not None:
                x = x + self.dropout(self.feed_forward(self.final_layer_norm(x)))
            return x
        if self.attention is not None:
            x = x + self.dropout(self.attention(x, key_padding_mask, position_bias))
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.dropout(self.feed_forward(x))
        return self.final_layer_norm(x)
