"""The trainable part of a probe (SUPERB's frozen-upstream protocol): a softmax-weighted sum of the frozen
encoder's hidden states feeding a small head. Nothing here touches the encoder; it only sees its outputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def normalize_states(states: torch.Tensor) -> torch.Tensor:
    """Each hidden state layer-normalised over its features (no learned scale): what `WeightedSum` mixes. Layers'
    scales differ by orders of magnitude (especially in random or compressed encoders), and without it the weights
    would mostly pick the loudest layer."""
    return F.layer_norm(states, states.shape[-1:])


class WeightedSum(nn.Module):
    """sum_l softmax(w)_l * h_l over the normalised hidden states (`normalize_states`): one learnable weight per
    state, starting equal. The states come normalised: a frozen encoder's are normalised once, when encoded,
    rather than at every step of every epoch."""

    def __init__(self, num_states: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_states))

    @property
    def weights(self) -> torch.Tensor:
        return F.softmax(self.logits, dim=0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """normalised states [L, B, T, D] -> [B, T, D]."""
        return torch.einsum("l,lbtd->btd", self.weights.to(states.dtype), states)


class CTCProbe(nn.Module):
    """Weighted sum -> linear layer to the units plus the CTC blank (index 0): frame-wise log-probabilities."""

    def __init__(self, num_states: int, dim: int, num_units: int):
        super().__init__()
        self.mix = WeightedSum(num_states)
        self.head = nn.Linear(dim, num_units + 1)

    def forward(self, states: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(self.mix(states)), dim=-1)  # [B, T, units + 1]


class ClassifyProbe(nn.Module):
    """Weighted sum -> mean over the real (unpadded) frames -> linear layer: class logits."""

    def __init__(self, num_states: int, dim: int, num_classes: int):
        super().__init__()
        self.mix = WeightedSum(num_states)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, states: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        mixed = self.mix(states)
        real = torch.arange(mixed.shape[1], device=mixed.device)[None, :] < frame_lengths[:, None]
        pooled = (mixed * real[..., None]).sum(1) / frame_lengths.clamp(min=1)[:, None].to(mixed.dtype)
        return self.head(pooled)


def greedy_ctc_decode(log_probs: torch.Tensor, frame_lengths: torch.Tensor) -> list[list[int]]:
    """Best path: the most likely unit per frame, repeats merged, blanks (0) dropped; unit ids start at 1."""
    best = log_probs.argmax(dim=-1).tolist()
    decoded = []
    for row, length in zip(best, frame_lengths.tolist()):
        out, previous = [], None
        for unit in row[:length]:
            if unit != previous and unit != 0:
                out.append(unit)
            previous = unit
        decoded.append(out)
    return decoded


def edit_distance(hypothesis, reference) -> int:
    """Levenshtein distance between two sequences (unit cost for insertion, deletion, substitution).

    Written here, in one row of the usual dynamic programme: sslc declares no edit-distance library and this
    is all the probe needs.
    """
    row = list(range(len(reference) + 1))
    for i, h in enumerate(hypothesis, 1):
        diagonal, row[0] = row[0], i
        for j, r in enumerate(reference, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (h != r))
    return row[-1]
