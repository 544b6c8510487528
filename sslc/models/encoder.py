"""The whole speech encoder: conv front end -> projection -> positional conv -> Transformer layers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .components import (
    ConvPositionalEmbedding,
    EncoderLayer,
    FeatureExtractor,
    FeatureProjection,
    RelativePositionBias,
)
from .config import EncoderConfig


@dataclass
class EncoderOutput:
    """What `SpeechEncoder.forward` returns; the same semantics as transformers' (>= 5) `output_hidden_states=True`.

    `hidden_states[0]` is the input to the first layer and `hidden_states[i]` the output of layer i, as is: for
    pre-LN models (`layer_norm_first`, the "large" layout) `hidden_states[-1]` is the last layer's output *before*
    the encoder's final LayerNorm. `last_hidden_state` is the encoder's final output (transformers'
    `last_hidden_state`): that final LayerNorm applied to `hidden_states[-1]` for pre-LN models, the same tensor as
    `hidden_states[-1]` for post-LN ones (and when not given). `frame_lengths` is None without padding info.
    """

    hidden_states: list[torch.Tensor]
    frame_lengths: torch.Tensor | None
    last_hidden_state: torch.Tensor | None = None

    def __post_init__(self):
        if self.last_hidden_state is None and self.hidden_states:
            self.last_hidden_state = self.hidden_states[-1]

    def frame_mask(self) -> torch.Tensor | None:
        """[B, T] True on real (non-padding) frames."""
        if self.frame_lengths is None:
            return None
        frames = self.hidden_states[0].shape[1]
        return torch.arange(frames, device=self.frame_lengths.device)[None, :] < self.frame_lengths[:, None]


def frame_mask_for(frame_lengths: torch.Tensor | None, frames: int) -> torch.Tensor | None:
    """[B, frames] True on real frames (None without padding info)."""
    if frame_lengths is None:
        return None
    return torch.arange(frames, device=frame_lengths.device)[None, :] < frame_lengths[:, None]


@dataclass
class SplitState:
    """What the first part of a split forward hands the rest (`run` -> `resume`), e.g. from a client to a server.

    stream: [B, T, D] the residual stream after the first `layer` layers, as the model carries it (for a
        `SpeechEncoder` it is `hidden_states[layer]`; an elastic student carries its channels in importance order).
    frame_lengths: [B] real frames per row, or None without padding; the padding mask is rebuilt from it (and
        WavLM's relative position bias from T), so nothing else needs to travel.
    layer: how many layers have run.
    states: the hidden states 0..layer as the output reports them, kept only by `run(..., keep_states=True)`;
        without them `resume` returns `hidden_states[layer:]` only (its first entry is the stream at the split).
    """

    stream: torch.Tensor
    frame_lengths: torch.Tensor | None
    layer: int
    states: list[torch.Tensor] | None = None


def check_split(split: SplitState, from_layer: int | None, depth: int, width: int) -> None:
    """ValueError unless `split` can resume on a model of `depth` layers and residual `width`."""
    if from_layer is not None and from_layer != split.layer:
        raise ValueError(f"the split state is after layer {split.layer}, not {from_layer}")
    if not 0 <= split.layer <= depth:
        raise ValueError(f"the split state is after layer {split.layer}, but the model has {depth} layers")
    if split.stream.dim() != 3 or split.stream.shape[-1] != width:
        raise ValueError(f"the split stream must be [B, T, {width}], got {tuple(split.stream.shape)}")


def check_until(until_layer: int | None, depth: int) -> int:
    if until_layer is None:
        return depth
    if not (isinstance(until_layer, int) and 0 <= until_layer <= depth):
        raise ValueError(f"until_layer must be 0..{depth}, got {until_layer!r}")
    return until_layer


class SpeechEncoder(nn.Module):
    """A wav2vec 2.0 / HuBERT / WavLM encoder built from an `EncoderConfig` (which rebuilds it exactly)."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.feature_extractor = FeatureExtractor(config.conv_layers, config.conv_bias, config.extractor_norm)
        self.feature_projection = FeatureProjection(
            config.conv_out_channels, config.embed_dim, config.projection_layer_norm, config.layer_norm_eps
        )
        self.pos_conv = ConvPositionalEmbedding(config.embed_dim, config.pos_conv_kernel, config.pos_conv_groups)
        # Post-LN models normalise the embeddings before layer 0; pre-LN models normalise after the last layer.
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        relative = config.relative_position is not None
        self.relative_position = RelativePositionBias(config.relative_position) if relative else None
        gate_width = gate_channels = None
        if relative:
            gate_width = config.relative_position.heads * config.head_dim
            if config.residual_sources() != list(range(gate_width)):  # a thin student
                gate_channels = config.residual_sources()
        self.layers = nn.ModuleList(
            EncoderLayer(config.embed_dim, spec, config.head_dim, config.layer_norm_first, config.layer_norm_eps,
                         relative, config.dropout, gate_channels, gate_width)
            for spec in config.layers
        )
        self.dropout = nn.Dropout(config.dropout)

    def _embed(self, waveforms: torch.Tensor, lengths: torch.Tensor | None):
        """Front end to the input of layer 0: (x [B, T, D], frame_lengths, padding mask)."""
        features = self.feature_extractor(waveforms).transpose(1, 2)
        frame_lengths = mask = None
        if lengths is not None:
            frame_lengths = self.feature_extractor.output_lengths(lengths.to(features.device))
            mask = frame_mask_for(frame_lengths, features.shape[1])
        x = self.feature_projection(features)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # padding must not leak through the positional conv
        x = x + self.pos_conv(x)
        if not self.config.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x), frame_lengths, mask

    def _position_bias(self, frames: int) -> torch.Tensor | None:
        return self.relative_position(frames) if self.relative_position is not None else None

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """waveforms [B, S] (zero-padded on the right), lengths [B] in samples or None when nothing is padded."""
        x, frame_lengths, mask = self._embed(waveforms, lengths)
        position_bias = self._position_bias(x.shape[1])
        hidden_states = [x]
        for layer in self.layers:
            x = layer(x, mask, position_bias)
            hidden_states.append(x)
        # Pre-LN models normalise the last layer's output; hidden_states keeps it as is (as transformers does).
        last = self.layer_norm(x) if self.config.layer_norm_first else x
        return EncoderOutput(hidden_states, frame_lengths, last)

    def run(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | None = None,
        until_layer: int | None = None,
        keep_states: bool = False,
    ) -> SplitState:
        """The first part of a split forward: the front end and layers 0..until_layer-1 (see `SplitState`)."""
        until = check_until(until_layer, self.config.num_layers)
        x, frame_lengths, mask = self._embed(waveforms, lengths)
        position_bias = self._position_bias(x.shape[1]) if until else None
        states = [x]
        for layer in self.layers[:until]:
            x = layer(x, mask, position_bias)
            states.append(x)
        return SplitState(x, frame_lengths, until, states if keep_states else None)

    def resume(self, split: SplitState, from_layer: int | None = None) -> EncoderOutput:
        """The rest of a split forward: layers split.layer.. and the final norm; equals `forward` on the same input
        (its `hidden_states` start at the split unless the split kept the earlier ones)."""
        check_split(split, from_layer, self.config.num_layers, self.config.embed_dim)
        x = split.stream
        mask = frame_mask_for(split.frame_lengths, x.shape[1])
        position_bias = self._position_bias(x.shape[1])
        hidden_states = list(split.states) if split.states is not None else [x]
        for layer in self.layers[split.layer :]:
            x = layer(x, mask, position_bias)
            hidden_states.append(x)
        last = self.layer_norm(x) if self.config.layer_norm_first else x
        return EncoderOutput(hidden_states, split.frame_lengths, last)
