"""A DPHuBERT-like student: heads, FFN units and CNN channels pruned at full depth and width to a MAC budget, by
one data-driven ranking across all layers (a layer's attention or FFN may go to 0: block removal).

DPHuBERT learns per-layer sizes with hard-concrete masks under a MAC constraint; this keeps its outcome's shape
(data decides how much of each layer survives, blocks may vanish) with a one-shot rule instead of that training:
every head, FFN unit and CNN channel gets its |activation x gradient| score (`importance.data_scores`, not
normalised per layer, so scores are comparable across layers and kinds: each estimates the loss change of
removing that element), divided by the MACs removing it saves, and the lowest-ranked are removed until the
student fits the budget; then the best-ranked of those whose MACs still fit the slack are given back. The in-layer order is the "data" criterion's, so `compress` keeps exactly the
top-ranked elements. Hand-written: torch.nn.utils.prune ranks within one tensor, not across layers under a cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sslc.metrics import macs_in_convention
from sslc.models import EncoderConfig

from .config import CompressionConfig
from .importance import as_batches, data_scores

KINDS = ("head", "ffn", "conv")


@dataclass(frozen=True)
class Element:
    """One prunable element: `kind` ("head", "ffn", "conv"), its layer (or conv layer), its index there, its
    data score and the MACs its removal saves (marginal, at the teacher's size)."""

    kind: str
    layer: int
    index: int
    score: float
    cost: int

    @property
    def rank_value(self) -> float:
        return self.score / max(self.cost, 1)


def _sizes(config: CompressionConfig) -> dict[str, list[int]]:
    return {"head": config.heads, "ffn": config.ffn, "conv": config.conv_channels}


def _macs(teacher: EncoderConfig, config: CompressionConfig, seconds: float, convention: str) -> int:
    return macs_in_convention(config.student_architecture(teacher), convention, seconds)


def _marginal_costs(teacher: EncoderConfig, seconds: float, convention: str) -> dict[str, list[int]]:
    """Per kind and layer, the MACs one element less saves from the teacher's full size."""
    full = CompressionConfig.identity(teacher)
    whole = _macs(teacher, full, seconds, convention)
    costs = {}
    for kind in KINDS:
        costs[kind] = []
        for layer in range(len(_sizes(full)[kind])):
            one_less = CompressionConfig.from_dict(full.to_dict())
            _sizes(one_less)[kind][layer] -= 1
            costs[kind].append(whole - _macs(teacher, one_less, seconds, convention))
    return costs


def ranked_elements(teacher_model, data, seconds: float, convention: str = "seconds") -> list[Element]:
    """Every removable element of `teacher_model`, lowest-ranked (first removed) first; each CNN layer's
    best channel is left out (a conv layer keeps at least one channel)."""
    teacher = teacher_model.config
    scores = data_scores(teacher_model, as_batches(data), normalise=False)
    costs = _marginal_costs(teacher, seconds, convention)
    elements = []
    for kind in KINDS:
        for layer, layer_scores in enumerate(scores[kind]):
            keep_one = int(torch.argmax(layer_scores)) if kind == "conv" else None
            elements += [Element(kind, layer, i, float(s), costs[kind][layer])
                         for i, s in enumerate(layer_scores.tolist()) if i != keep_one]
    return sorted(elements, key=lambda e: (e.rank_value, e.kind, e.layer, e.index))


def without(teacher: EncoderConfig, removed: list[Element]) -> CompressionConfig:
    """The teacher's full config less `removed`, ranked by the "data" criterion (which keeps the others)."""
    config = CompressionConfig.identity(teacher)
    config.head_importance = config.ffn_importance = config.conv_importance = "data"
    for element in removed:
        _sizes(config)[element.kind][element.layer] -= 1
    return config


def prune_to_budget(teacher_model, data, max_macs: int, seconds: float,
                    convention: str = "seconds") -> CompressionConfig | None:
    """The DPHuBERT-like config of `teacher_model` within `max_macs` (in `convention`), removing the fewest
    lowest-ranked elements that reach it; None when even removing every element does not."""
    teacher = teacher_model.config
    order = ranked_elements(teacher_model, data, seconds, convention)

    def fits(count: int) -> bool:
        return _macs(teacher, without(teacher, order[:count]), seconds, convention) <= max_macs

    if not fits(len(order)):
        return None
    low, high = 0, len(order)  # MACs never grow as more elements go: bisect on how many
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    # The last element removed may cost far more than the budget needed (a head beside FFN units): give back the
    # best-ranked removed elements that still fit, so the student ends close to the budget.
    removed = order[:low]
    slack = max_macs - _macs(teacher, without(teacher, removed), seconds, convention)
    for element in reversed(order[:low]):
        if element.cost > slack:
            continue
        candidate = [e for e in removed if e is not element]
        macs = _macs(teacher, without(teacher, candidate), seconds, convention)
        if macs <= max_macs:
            removed, slack = candidate, max_macs - macs
    return without(teacher, removed)
