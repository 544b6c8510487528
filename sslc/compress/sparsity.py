"""Unstructured magnitude pruning of a student's Transformer linears, kept through training.

The smallest-magnitude weights of each linear are masked with `torch.nn.utils.prune` (the weight becomes
`weight_orig * weight_mask`, recomputed before every forward), so distillation cannot regrow them: every training
of a student built by `compress` (trial, retrain) keeps the mask, and its checkpoints hold `weight_orig` and
`weight_mask`. A saved student holds the plain masked weights (`dense_state_dict`). Tensors stay dense, so this
lowers the count of non-zero parameters (what a sparse kernel or a compressed checkpoint would exploit) but not
the dense MACs or latency.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

MASKED = "weight"  # the pruned tensor of each prunable linear


def prunable_linears(model: nn.Module) -> list[nn.Linear]:
    """The attention projections and FFN linears of every layer (both factors of a low-rank one; none of a
    removed block).

    WavLM's tiny gate linear and the front end are left dense: they are a negligible share of the weights.
    """
    linears = []
    for layer in model.layers:
        parts = []
        if layer.attention is not None:
            attention = layer.attention
            parts += [attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj]
        if layer.feed_forward is not None:
            parts += [layer.feed_forward.fc1, layer.feed_forward.fc2]
        for part in parts:
            linears.extend(m for m in part.modules() if isinstance(m, nn.Linear))
    return linears


@torch.no_grad()
def magnitude_prune_(model: nn.Module, fraction: float) -> float:
    """Mask `fraction` of each prunable weight by magnitude (kept masked through training); returns the zero
    fraction now in those weights."""
    zeros = total = 0
    for linear in prunable_linears(model):
        count = round(fraction * linear.weight.numel())
        if count:
            prune.l1_unstructured(linear, MASKED, amount=count)
            linear.weight_orig.mul_(linear.weight_mask)  # the parameters themselves hold the zeros too
        zeros += int((linear.weight == 0).sum())
        total += linear.weight.numel()
    return zeros / max(total, 1)


def is_masked(model: nn.Module) -> bool:
    """Whether any module of `model` carries a pruning mask."""
    return prune.is_pruned(model)


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` with every pruning mask applied and folded: `X_orig` and `X_mask` become `X`, the
    masked tensor (what `build_encoder(model.config)` loads)."""
    state = model.state_dict()
    for key in [k for k in state if k.endswith("_orig") and k[: -len("_orig")] + "_mask" in state]:
        name = key[: -len("_orig")]
        state[name] = state.pop(key) * state.pop(name + "_mask")
    return state


def without_masks(model: nn.Module) -> nn.Module:
    """A plain copy of a masked `SpeechEncoder` (no pruning hooks) with the masked weights; `model` itself when it
    has no masks."""
    if not is_masked(model):
        return model
    from sslc.models import build_encoder  # here: sparsity is otherwise independent of the model family

    parameter = next(model.parameters())
    plain = build_encoder(model.config)
    plain.load_state_dict(dense_state_dict(model), strict=True)
    return plain.to(device=parameter.device, dtype=parameter.dtype).train(model.training)
