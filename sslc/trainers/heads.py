"""The small prediction heads that map student hidden states onto teacher targets (one linear per pair), and
how every student's heads start (`fit_heads_`).

Why the start is chosen on held-out frames: a least-squares fit on a few hundred frames with a negligible ridge
nearly interpolates when the student is wide (768 features from ~800 frames at the demo's 2 x 1 s batches), so its
error on new frames grows with the width and a short trial ranked students partly by narrowness (issue 23: the
full-width `uniform` baseline scored 32.3 where narrower students scored 1.0-2.7). The fit is therefore a ridge
regression whose ridge is chosen on a split of the fit frames, by the loss the trial is scored by (L1 + cosine),
among a grid spanning nearly-unregularised to heavily shrunk, with the placed start (`PredictionHeads`: identity,
or each kept channel back where it was cut from) as one more candidate, kept when no fit beats it there. One
eigendecomposition of the fit frames' Gram matrix gives every ridge's solution (as RidgeCV does), so the grid costs
little more than one fit; it is hand-written in torch because sklearn's RidgeCV chooses by squared error (not the
trial's loss), cannot include the placed start, and sklearn is not a dependency. Extra channels then widen what
the fit can express without being spent on fitting noise (a ridge that would overfit them loses on the held-out
clips), so the start no longer rewards narrowness; the chosen ridge is then refitted on all the fit frames."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sslc.losses import layer_distillation_loss


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


# Ridges tried, as multiples of the mean eigenvalue of the centred Gram matrix (the mean feature variance x frames):
# from a nearly interpolating fit to one shrunk well past the data.
RIDGES = tuple(10.0 ** k for k in range(-6, 2))


@torch.no_grad()
def fit_heads_(heads: PredictionHeads, fit: tuple[list[torch.Tensor], list[torch.Tensor]],
               check: tuple[list[torch.Tensor], list[torch.Tensor]], ridges: Sequence[float] = RIDGES
               ) -> list[float | None]:
    """Start each head at whichever candidate predicts the `check` frames best by the distillation loss: its
    current (placed) weights, or the ridge regression from its student states to its targets on the `fit` frames
    (centred, ridge = r x the mean eigenvalue of the Gram matrix, r in `ridges`), refitted on fit + check frames.

    `fit` and `check` are (student states, targets), one [N, d] and [N, D] tensor per head, the check frames from
    other clips than the fit frames. In place; returns each head's chosen r (None: the placed start kept).

    Why: see the module docstring. A pruned student's states are no longer the teacher's, and what it lost is
    largely linear in what it kept, so a fitted start predicts it from the first step; the same rule for every
    student keeps their scores comparable. (An L2 fit, chosen by the L1 + cosine loss: a start, not the optimum.)"""
    chosen = []
    for head, x, y, x_check, y_check in zip(heads.heads, *fit, *check):
        x, y = x.double(), y.double()
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc = x - x_mean
        eigenvalues, eigenvectors = torch.linalg.eigh(xc.T @ xc)
        eigenvalues = eigenvalues.clamp_min(0.0)
        scale = eigenvalues.mean().clamp_min(1e-12)
        rotated_xty = eigenvectors.T @ (xc.T @ (y - y_mean))  # [d, D]
        rotated_check = ((x_check.double() - x_mean) @ eigenvectors).float()
        target = y_check.float().unsqueeze(0)
        best_loss = _check_loss(head(x_check.to(head.weight.dtype)).float(), target)
        best_ridge = None
        for ridge in ridges:
            weight = rotated_xty / (eigenvalues + ridge * scale).unsqueeze(1)
            loss = _check_loss(rotated_check @ weight.float() + y_mean.float(), target)
            if loss < best_loss:  # ties keep the placed start: a copy of the teacher keeps its exact identity
                best_loss, best_ridge = loss, ridge
        chosen.append(best_ridge)
        if best_ridge is not None:
            _set_ridge_fit(head, torch.cat([x, x_check.double()]), torch.cat([y, y_check.double()]), best_ridge)
    return chosen


def _check_loss(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float(layer_distillation_loss(prediction.unsqueeze(0), target))


def _set_ridge_fit(head: nn.Linear, x: torch.Tensor, y: torch.Tensor, ridge: float) -> None:
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc
    gram += torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal().mean().clamp_min(1e-12)
    weight = torch.linalg.solve(gram, xc.T @ (y - y_mean))  # [d, D]
    head.weight.copy_(weight.T.to(head.weight.dtype))
    head.bias.copy_((y_mean - x_mean @ weight).to(head.bias.dtype))
