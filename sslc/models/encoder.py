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

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> EncoderOutput:
        """waveforms [B, S] (zero-padded on the right), lengths [B] in samples or None when nothing is padded."""
        features = self.feature_extractor(waveforms).transpose(1, 2)
        frame_lengths = mask = None
        if lengths is not None:
            frame_lengths = self.feature_extractor.output_lengths(lengths.to(features.device))
            mask = torch.arange(features.shape[1], device=features.device)[None, :] < frame_lengths[:, None]
        x = self.feature_projection(features)
        if mask is not None:
            x = x.masked_fill(~mask[..., None], 0.0)  # padding must not leak through the positional conv
        x = x + self.pos_conv(x)
        if not self.config.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = self.relative_position(x.shape[1]) if self.relative_position is not None else None
        hidden_states = [x]
        for layer in self.layers:
            x = layer(x, mask, position_bias)
            hidden_states.append(x)
        # Pre-LN models normalise the last layer's output; hidden_states keeps it as is (as transformers does).
        last = self.layer_norm(x) if self.config.layer_norm_first else x
        return EncoderOutput(hidden_states, frame_lengths, last)
