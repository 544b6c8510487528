"""The small prediction heads that map student hidden states onto teacher targets (one linear per pair)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PredictionHeads(nn.Module):
    """Head i maps student hidden state `layer_map[i][0]` to a prediction of teacher hidden `layer_map[i][1]`.

    With equal widths a head starts as the identity, so a student copied from the teacher starts at the loss's
    minimum instead of at whatever a random projection would give. A thin student's heads start by placing each
    channel back at the teacher channel it was cut from (`placement`, its `residual_index`; pruned channels are
    predicted as zero), the same start as near as its width allows.
    """

    def __init__(self, layer_map: Sequence[tuple[int, int]], student_dim: int, teacher_dim: int,
                 placement: Sequence[int] | None = None):
        super().__init__()
        self.layer_map = [(int(s), int(t)) for s, t in layer_map]
        self.heads = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in self.layer_map)
        if placement is None and student_dim == teacher_dim:
            placement = range(teacher_dim)
        if placement is not None and len(placement) == student_dim and max(placement) < teacher_dim:
            start = torch.zeros(teacher_dim, student_dim)
            start[torch.as_tensor(list(placement)), torch.arange(student_dim)] = 1.0
            with torch.no_grad():
                for head in self.heads:
                    head.weight.copy_(start)
                    head.bias.zero_()

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [head(hidden_states[s]) for head, (s, _) in zip(self.heads, self.layer_map)]


@torch.no_grad()
def fit_heads_(heads: PredictionHeads, student_states: list[torch.Tensor], targets: list[torch.Tensor],
               ridge: float = 1e-6) -> None:
    """Set each head to the least-squares map from its student states [N, d] to its targets [N, D] (centred,
    with a ridge of `ridge` x the mean feature variance), in place.

    Why: a pruned student's states are no longer the teacher's, and an identity start (or, for a thin student,
    placing its channels back, which predicts the pruned ones as zero) costs its short trial many steps to leave;
    what it lost is largely linear in what it kept, so this start predicts it from the first step. The same fit
    for every student keeps their scores comparable. (An L2 fit, while the loss is L1 + cosine: a start, not the
    optimum.)"""
    for head, x, y in zip(heads.heads, student_states, targets):
        x, y = x.double(), y.double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc, yc = x - x_mean, y - y_mean
        gram = xc.T @ xc
        gram += torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal().mean().clamp_min(1e-12)
        weight = torch.linalg.solve(gram, xc.T @ yc)  # [d, D]
        head.weight.copy_(weight.T.to(head.weight.dtype))
        head.bias.copy_((y_mean - x_mean @ weight).to(head.bias.dtype))
