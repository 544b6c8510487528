"""A Pareto point as one row: what it costs and how good it is, next to the teacher. The Pareto files
(pareto.json / pareto.csv), the terminal table and the report's table all print these rows."""

from __future__ import annotations

from .study import METRIC_NAMES, TeacherRecord
from .trials import TrialRecord


def _ratio(value, reference):
    return value / reference if value is not None and reference else None


def front_row(trial: TrialRecord, objectives: list[str], teacher: TeacherRecord) -> dict:
    """`objectives`: the study's, in the order of the trial's values; `teacher`: the study's teacher."""
    teacher_macs, teacher_params = teacher.macs, teacher.params
    return {
        "trial": trial.number,
        # A multi-fidelity trial's values hold its fidelity-1 loss (the sampler's); the point is its top fidelity's.
        "objectives": {METRIC_NAMES[name]: trial.heldout_loss if name == "loss" and trial.heldout_loss_by_fidelity
                       else value for name, value in zip(objectives, trial.values or [])},
        "loss": trial.heldout_loss,
        "fidelity": trial.fidelity,  # the multiple of the study's --steps the loss was measured after
        "loss_by_fidelity": {str(f): v for f, v in trial.heldout_loss_by_fidelity.items()} or None,
        "loss_by_target": trial.heldout_loss_by_target,
        "gmacs": trial.gmacs,
        "macs": trial.macs,
        "macs_superb": trial.macs_superb,  # the published tables' convention (SUPERB's 32 utterances)
        "gmacs_superb": trial.macs_superb / 1e9 if trial.macs_superb is not None else None,
        "params": trial.model_params,
        "params_m": trial.model_params / 1e6 if trial.model_params is not None else None,
        "latency_ms": trial.latency_ms,
        "mac_ratio": _ratio(trial.macs, teacher_macs),
        "param_ratio": _ratio(trial.model_params, teacher_params),
        "speedup": _ratio(teacher_macs, trial.macs),
        "config": trial.config,
    }
