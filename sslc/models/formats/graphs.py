"""A student as a traceable graph: tensors in, a flat tuple of tensors out, for ONNX and TorchScript.

`StudentGraph`: (waveforms [B, S], lengths [B]) -> (hidden_state_0 .. hidden_state_L, last_hidden_state,
frame_lengths). The lengths input is always there (pass each row's full length when nothing is padded): the
padding mask is computed from it inside the graph. `ClientGraph` / `ServerGraph` cut the same forward after
layer k (`SpeechEncoder.run` / `resume`): the client runs the CNN and layers 0..k-1 and returns the states up to
the split; the server takes the residual stream at the split and the frame lengths and returns the rest.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..encoder import SpeechEncoder, SplitState


def output_names(num_layers: int, first: int = 0) -> list[str]:
    return [f"hidden_state_{i}" for i in range(first, num_layers + 1)]


def traceable(encoder: SpeechEncoder) -> SpeechEncoder:
    """A float eval copy of `encoder` whose attention takes the explicit softmax path: torch 2.13's export cannot
    decompose the fused attention kernel with WavLM's [B, H, T, T] bias under a dynamic time axis (a view of a
    transposed tensor); the explicit path computes the same attention."""
    if not isinstance(encoder, SpeechEncoder):
        raise TypeError("only a float SpeechEncoder can be exported as a graph (int8 modules cannot be traced)")
    graph = copy.deepcopy(encoder).float().eval()
    for module in graph.modules():
        if hasattr(module, "record_attention"):
            module.record_attention = True
    return graph


class StudentGraph(nn.Module):
    def __init__(self, encoder: SpeechEncoder):
        super().__init__()
        self.encoder = traceable(encoder)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor):
        output = self.encoder(waveforms, lengths)
        return (*output.hidden_states, output.last_hidden_state, output.frame_lengths)


class ClientGraph(nn.Module):
    def __init__(self, encoder: SpeechEncoder, until_layer: int):
        super().__init__()
        self.encoder, self.until_layer = traceable(encoder), until_layer

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor):
        split = self.encoder.run(waveforms, lengths, self.until_layer, keep_states=True)
        return (*split.states, split.frame_lengths)


class ServerGraph(nn.Module):
    def __init__(self, encoder: SpeechEncoder, from_layer: int):
        super().__init__()
        self.encoder, self.from_layer = traceable(encoder), from_layer

    def forward(self, stream: torch.Tensor, frame_lengths: torch.Tensor):
        output = self.encoder.resume(SplitState(stream, frame_lengths, self.from_layer))
        return (*output.hidden_states[1:], output.last_hidden_state)


def example_batch(seconds: float = 1.0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded example batch (the second row shorter), so tracing sees the padding path."""
    samples = int(16000 * seconds)
    generator = torch.Generator().manual_seed(0)
    waveforms = 0.1 * torch.randn(batch, samples, generator=generator)
    lengths = torch.tensor([samples] + [samples * 3 // 4] * (batch - 1))
    for row in range(1, batch):
        waveforms[row, lengths[row]:] = 0.0
    return waveforms, lengths
