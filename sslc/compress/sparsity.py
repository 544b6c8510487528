"""Unstructured magnitude pruning of a student's Transformer linears.

The smallest-magnitude weights of each linear are set to zero in place; tensors stay dense, so this lowers the
count of non-zero parameters (what a sparse kernel or a compressed checkpoint would exploit) but not the dense
MACs or latency.
"""

from __future__ import annotations

import torch
from torch import nn


def prunable_linears(model: nn.Module) -> list[nn.Linear]:
    """The attention projections and FFN linears of every layer (both factors of a low-rank one).

    WavLM's tiny gate linear and the front end are left dense: they are a negligible share of the weights.
    """
    linears = []
    for layer in model.layers:
        for part in (
            layer.attention.q_proj,
            layer.attention.k_proj,
            layer.attention.v_proj,
            layer.attention.out_proj,
            layer.feed_forward.fc1,
            layer.feed_forward.fc2,
        ):
            linears.extend(m for m in part.modules() if isinstance(m, nn.Linear))
    return linears


@torch.no_grad()
def magnitude_prune_(model: nn.Module, fraction: float) -> float:
    """Zero `fraction` of each prunable weight by magnitude; returns the zero fraction now in those weights."""
    zeros = total = 0
    for linear in prunable_linears(model):
        weight = linear.weight
        count = round(fraction * weight.numel())
        if count:
            flat = weight.view(-1)
            flat[flat.abs().topk(count, largest=False).indices] = 0.0
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / max(total, 1)
