"""The small prediction heads that map student hidden states onto teacher targets (one linear per pair)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PredictionHeads(nn.Module):
    """Head i maps student hidden state `layer_map[i][0]` to a prediction of teacher hidden `layer_map[i][1]`.

    With equal widths a head starts as the identity, so a student copied from the teacher starts at the loss's
    minimum instead of at whatever a random projection would give.
    """

    def __init__(self, layer_map: Sequence[tuple[int, int]], student_dim: int, teacher_dim: int):
        super().__init__()
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        self.heads = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.layer_map)
        if student_dim == teacher_dim:
            with torch.no_grad():
                for head in self.heads:
                    head.weight.copy_(torch.eye(teacher_dim))
                    head.bias.zero_()

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(hidden_states[s]) for head, (s, _) in zip(self.heads, self.layer_map)]
