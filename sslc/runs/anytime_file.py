"""The anytime file: one elastic student (every size) and its front of chosen sizes, versioned like the student file.

`save_anytime(path, elastic, front)` writes it; `sslc.load_student(path, budget="20GMACs")` extracts the front
point with the best (lowest) score within the budget as an ordinary student; `load_anytime(path)` returns the whole
model (`AnytimeStudent`: `.front`, sub-network forward and split execution for any budget). MACs are sslc's own
convention (one 10 s waveform); a budget share ("40%") is of the teacher's MACs, which the file records.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sslc.budget import BudgetError, BudgetSpec, parse_budget
from sslc.compress.config import CompressionConfig
from sslc.compress.elastic import ElasticStudent
from sslc.errors import UserError, first_line
from sslc.metrics.macs import count_macs, format_macs
from sslc.models import EncoderConfig, EncoderOutput, SplitState

from .student_file import ANYTIME_FORMAT, ExportedStudent, read_payload, write_payload

FORMAT = ANYTIME_FORMAT
VERSION = 1


@dataclass(frozen=True)
class FrontPoint:
    """One chosen size: its config, its analytic MACs (one 10 s waveform) and its score (lower is better)."""

    config: CompressionConfig
    macs: int
    score: float

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "macs": int(self.macs), "score": float(self.score)}

    @classmethod
    def from_dict(cls, data: dict) -> FrontPoint:
        return cls(CompressionConfig.from_dict(data["config"]), int(data["macs"]), float(data["score"]))


def front_points(elastic: ElasticStudent, front) -> list[FrontPoint]:
    """`front` (FrontPoints or (config, macs, score) tuples; config a `CompressionConfig` or its dict; macs None
    to count them) checked against `elastic`: each config a sub-network of it, each MACs its analytic count."""
    points = []
    for item in front:
        config, macs, score = (item.config, item.macs, item.score) if isinstance(item, FrontPoint) else item
        if isinstance(config, dict):
            config = CompressionConfig.from_dict(config)
        elastic.sizes(config)  # ConfigError unless it is a sub-network
        analytic = count_macs(config.student_architecture(elastic.config)).total
        if macs is not None and int(macs) != analytic:
            raise ValueError(f"a front point's MACs ({macs}) differ from its analytic count in sslc's convention "
                             f"(one 10 s waveform: {analytic}); pass those, or None to have them counted")
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"a front point's score must be a finite number, got {score!r}")
        points.append(FrontPoint(config, analytic, float(score)))
    if not points:
        raise ValueError("the front of an anytime file needs at least one point")
    return points


def save_anytime(
    path: str | os.PathLike,
    elastic: ElasticStudent,
    front,
    teacher: str = "",
    score_name: str = "heldout_loss",
    provenance: dict | None = None,
    container: str = "sslc",
) -> Path:
    """Write `elastic` and its `front` (see `front_points`; scores: lower is better, named `score_name`) in
    `container` ("sslc": torch.save, or "safetensors")."""
    points = front_points(elastic, front)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": elastic.config.to_dict(),  # the teacher's: the elastic student's full size
        "criteria": dict(elastic.criteria),
        "state_dict": {k: v.detach().cpu() for k, v in elastic.state_dict().items()},
        "teacher_macs": count_macs(elastic.config).total,
        "front": [point.to_dict() for point in points],
        "score_name": str(score_name),
        "teacher": str(teacher),
        "provenance": dict(provenance or {}),
    }
    return write_payload(path, payload, container)


# ---- choosing a point ---------------------------------------------------------------------------------------------
def budget_limit(budget: str | float | BudgetSpec, teacher_macs: int) -> int:
    """A budget ("20GMACs", "3e10", "40%", a number of MACs, or a `BudgetSpec`) as a MAC limit."""
    if isinstance(budget, str):
        budget = parse_budget(budget)
    if isinstance(budget, BudgetSpec):
        return budget.resolve(teacher_macs)
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0:
        return int(budget)
    raise BudgetError(f"budget must be MACs such as '20GMACs' or a share such as '40%', got {budget!r}")


def best_point(front: list[FrontPoint], limit: int | None) -> FrontPoint | None:
    """The lowest-score point with at most `limit` MACs (ties: fewer MACs); None when none fits."""
    fitting = [p for p in front if limit is None or p.macs <= limit]
    return min(fitting, key=lambda p: (p.score, p.macs)) if fitting else None


class AnytimeStudent(nn.Module):
    """An elastic student and its front: every method takes a `budget` and uses the best point within it."""

    sample_rate = ExportedStudent.sample_rate

    def __init__(self, elastic: ElasticStudent, front: list[FrontPoint], teacher_macs: int,
                 metadata: dict | None = None):
        super().__init__()
        self.elastic = elastic
        self.front = list(front)
        self.teacher_macs = int(teacher_macs)
        self.metadata = dict(metadata or {})

    def point(self, budget=None) -> FrontPoint:
        """The best point within `budget` (None: the best point); UserError (one line) when none fits."""
        limit = None if budget is None else budget_limit(budget, self.teacher_macs)
        point = best_point(self.front, limit)
        if point is None:
            smallest = min(p.macs for p in self.front)
            raise UserError(f"no student of this anytime file fits the budget {budget!r} ({format_macs(limit)}MACs "
                            f"per 10 s): the smallest needs {format_macs(smallest)}MACs")
        return point

    def student(self, budget=None) -> ExportedStudent:
        """The best point within `budget`, extracted as an ordinary student (its own weights)."""
        point = self.point(budget)
        encoder = self.elastic.extract(point.config)
        metadata = {
            "teacher": self.metadata.get("teacher"),
            "compression": point.config.to_dict(),
            "provenance": dict(self.metadata.get("provenance") or {}),
            "metrics": {"macs": point.macs, self.metadata.get("score_name", "score"): point.score},
            "anytime": {"budget": budget if isinstance(budget, (str, int, float)) else str(budget),
                        "point": self.front.index(point)},
        }
        return ExportedStudent(encoder, encoder.config, metadata).eval()

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, budget=None) -> EncoderOutput:
        return self.elastic(waveforms, lengths, config=self.point(budget).config)

    def run(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None, until_layer: int | None = None,
            budget=None, keep_states: bool = False) -> SplitState:
        return self.elastic.run(waveforms, lengths, until_layer, self.point(budget).config, keep_states)

    def resume(self, split: SplitState, from_layer: int | None = None, budget=None) -> EncoderOutput:
        return self.elastic.resume(split, from_layer, self.point(budget).config)


# ---- reading ------------------------------------------------------------------------------------------------------
def anytime_from_payload(payload: dict, path: str | os.PathLike, map_location="cpu") -> AnytimeStudent:
    if payload.get("format") != FORMAT or int(payload.get("version", 0)) > VERSION:
        raise UserError(f"{path} is a {payload.get('format')} file of version {payload.get('version')}: "
                        f"this sslc reads {FORMAT} up to version {VERSION}")
    try:
        config = EncoderConfig.from_dict(payload["architecture"])
        elastic = ElasticStudent(config, payload["criteria"])
        elastic.load_state_dict(payload["state_dict"], strict=True)
        front = [FrontPoint.from_dict(point) for point in payload["front"]]
        for point in front:
            elastic.sizes(point.config)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"anytime file {path} is inconsistent: {first_line(error)[:160]}") from None
    if isinstance(map_location, (str, torch.device)):
        elastic = elastic.to(map_location)
    metadata = {k: payload.get(k) for k in ("teacher", "provenance", "score_name", "criteria")}
    return AnytimeStudent(elastic.eval(), front, payload["teacher_macs"], metadata).eval()


def load_anytime(path: str | os.PathLike, map_location="cpu") -> AnytimeStudent:
    """The whole anytime model of a file `save_anytime` wrote, in eval mode on `map_location`."""
    return anytime_from_payload(read_payload(path, map_location), path, map_location)
