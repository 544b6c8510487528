"""The distillation loss shared by importance scoring and the trainers (DistilHuBERT's L1 + cosine)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# -log sigmoid(1): the cosine term's value at a perfect prediction. Subtracted so that a perfect prediction
# scores exactly 0 (a constant shift: gradients are DistilHuBERT's).
_COSINE_FLOOR = math.log1p(math.exp(-1.0))


def layer_distillation_loss(
    prediction: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L1 distance plus -log sigmoid(cosine similarity) (minus its floor), averaged over real frames.

    prediction, target: [B, T, D]; frame_mask: [B, T] True on real frames (None: all frames are real).
    """
    target = target.to(prediction.dtype)
    l1 = (prediction - target).abs().mean(-1)
    cosine = -F.logsigmoid(F.cosine_similarity(prediction, target, dim=-1)) - _COSINE_FLOOR
    per_frame = l1 + cosine
    if frame_mask is None:
        return per_frame.mean()
    weights = frame_mask.to(per_frame.dtype)
    return (per_frame * weights).sum() / weights.sum().clamp(min=1.0)


def distillation_loss(
    predictions: list[torch.Tensor], targets: list[torch.Tensor], frame_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean over target layers of `layer_distillation_loss` (the score averages targets, so training does too);
    also returns each layer's term."""
    if len(predictions) != len(targets) or not predictions:
        raise ValueError(f"need matching, non-empty predictions and targets, got {len(predictions)} and {len(targets)}")
    terms = [layer_distillation_loss(p, t, frame_mask) for p, t in zip(predictions, targets)]
    return torch.stack(terms).mean(), terms
