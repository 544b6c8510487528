"""Every trial of a run as one point of the report: where it sits (MACs, latency, loss) and what became of it."""

from __future__ import annotations

from dataclasses import dataclass

from sslc.runs.record import RunRecord
from sslc.runs.trials import Outcome

# How each category is named on the plots, in legend order. Only COMPLETE trials have a held-out loss.
CATEGORY_LABELS = {
    "complete": "complete (dominated)",
    "pruned": "stopped early (pruned)",
    "infeasible": "over budget (never trained)",
    "failed": "failed",
    "interrupted": "interrupted",
    "repeat": "repeat (answered from an earlier trial)",
    "running": "running",
}
# Repeats are in neither group: a repeat is its original's point, already drawn once.
UNSCORED = ("pruned", "infeasible", "failed", "interrupted", "running")
# The same categories counted in the report's summary line.
CATEGORY_COUNTS = {
    "complete": "complete",
    "pruned": "stopped early",
    "infeasible": "over budget",
    "failed": "failed",
    "interrupted": "interrupted",
    "repeat": "repeated (not trained again)",
    "running": "running",
}


@dataclass
class TrialPoint:
    number: int
    category: str  # an Outcome's value, see CATEGORY_LABELS
    pareto: bool
    macs: int | None
    params: int | None
    loss: float | None  # held-out distillation loss (COMPLETE trials)
    latency_ms: float | None
    train_loss: float | None  # the last training loss reported (pruned trials stop with one)
    steps_done: int | None
    reason: str | None
    config: dict | None
    retrain: dict | None
    # Multi-fidelity search: the multiple of --steps its loss was measured after, its steps then, and the top
    # fidelity of the run (a point below it is drawn as lower-fidelity, never on the front).
    fidelity: int = 1
    top_fidelity: int = 1

    @property
    def lower_fidelity(self) -> bool:
        return self.category == "complete" and self.fidelity < self.top_fidelity

    @property
    def gmacs(self) -> float | None:
        return self.macs / 1e9 if self.macs is not None else None

    def hover(self) -> str:
        lines = [f"trial {self.number}: {CATEGORY_LABELS[self.category]}{' - Pareto' if self.pareto else ''}"]
        if self.loss is not None:
            at = f" at fidelity {self.fidelity}x ({self.steps_done} steps)" if self.top_fidelity > 1 else ""
            lines.append(f"held-out loss {self.loss:.4f}{at}")
        if self.macs is not None:
            lines.append(f"{self.macs / 1e9:.3f} GMACs")
        if self.params is not None:
            lines.append(f"{self.params / 1e6:.3f} M params")
        if self.latency_ms is not None:
            lines.append(f"latency {self.latency_ms:.1f} ms")
        if self.category == "pruned":
            lines.append(f"stopped at step {self.steps_done}, last training loss {_fmt(self.train_loss)}")
        if self.config:
            layers = self.config.get("layers") or []
            lines.append(f"layers {layers}, heads {self.config.get('heads')}")
        if self.reason and self.category != "complete":
            lines.append(self.reason[:120])
        if self.retrain and self.retrain.get("heldout_loss") is not None:
            lines.append(f"retrained {self.retrain.get('steps')} steps: loss {self.retrain['heldout_loss']:.4f}")
        return "<br>".join(lines)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def collect_points(run: RunRecord) -> list[TrialPoint]:
    """One point per trial of the study, in trial order; `pareto` marks the front."""
    best = {t.number for t in run.front()}
    retrained = run.record.retrains
    names = run.record.objectives
    trials = run.trials()
    top = max((t.fidelity for t in trials if t.outcome == Outcome.COMPLETE), default=1)
    points = []
    for trial in trials:
        loss = None
        if trial.outcome == Outcome.COMPLETE and trial.heldout_loss_by_fidelity:
            loss = trial.heldout_loss  # at the fidelity it reached (its values hold the fidelity-1 score)
        elif trial.outcome == Outcome.COMPLETE:
            loss = trial.values[names.index("loss")] if trial.values and "loss" in names else trial.heldout_loss
        curve = trial.train_curve
        points.append(
            TrialPoint(
                number=trial.number,
                category=trial.outcome.value,
                pareto=trial.number in best,
                macs=trial.macs,
                params=trial.model_params,
                loss=loss,
                latency_ms=trial.latency_ms,
                train_loss=curve[-1][1] if curve else None,
                steps_done=trial.last_step,
                reason=trial.explanation(),
                config=trial.config,
                retrain=retrained.get(trial.number),
                fidelity=trial.fidelity,
                top_fidelity=top,
            )
        )
    return points


def count_by_category(points: list[TrialPoint]) -> dict[str, int]:
    counts = {category: 0 for category in CATEGORY_LABELS}
    for point in points:
        counts[point.category] += 1
    return counts
