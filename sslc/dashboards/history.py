"""How the search went: hypervolume over trials, and what mattered (Optuna's importances, parallel coordinates).

These come from `optuna.visualization`; each returns None (with the reason) when the study cannot support it
yet, e.g. importances need at least two complete trials whose parameters differ.
"""

from __future__ import annotations

import logging
import warnings

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from sslc.runs.record import RunRecord
from sslc.runs.trials import Outcome, TrialRecord, outcome_of

log = logging.getLogger("sslc.dashboards")
UNITS = {"loss": "held-out loss", "macs": "GMACs", "latency": "latency (ms)"}
MARGIN = 1.1  # a reference point 10% beyond the worst complete trial
PARALLEL_PARAMS = 8


def _scored(run: RunRecord) -> list[TrialRecord]:
    """The COMPLETE trials with measured values: an over-budget trial is COMPLETE in Optuna too (placeholder
    values, positive constraint; see `sslc.runs.trials.Outcome`) but was never trained."""
    return [t for t in run.trials(states=(TrialState.COMPLETE,)) if t.values and t.outcome != Outcome.INFEASIBLE]


def _scored_study(run: RunRecord) -> optuna.Study:
    """The study as Optuna's importance and parallel-coordinate plots should see it: an in-memory copy (trials
    renumbered) without the over-budget trials, whose placeholder losses were never measured. The hypervolume
    history needs none: Optuna leaves infeasible trials (positive constraint values) out of the volume itself."""
    kept = [t for t in run.study.get_trials(deepcopy=False) if outcome_of(t) != Outcome.INFEASIBLE]
    if len(kept) == len(run.study.get_trials(deepcopy=False)):
        return run.study
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line in the report's output
    try:
        copy = optuna.create_study(directions=run.study.directions, study_name=run.study.study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(kept)
    return copy


def reference_point(run: RunRecord) -> list[float] | None:
    """Per objective, the point every counted trial must beat: the budget for MACs and latency when there is one
    (and no complete trial exceeds it), else 10% beyond the worst complete trial. None without complete trials."""
    complete = _scored(run)
    if not complete:
        return None
    budget = run.record.budget
    limits = {
        # The MACs objective is for the budget's seconds: a budget in another convention does not bound it.
        "macs": budget.max_macs / 1e9 if budget is not None and budget.convention == "seconds" else None,
        "latency": budget.max_latency_ms if budget is not None else None,
    }
    point = []
    for i, name in enumerate(run.record.objectives):
        worst = max(t.values[i] for t in complete)
        limit = limits.get(name)
        if limit is not None and limit > worst:
            point.append(float(limit))
        else:
            point.append(float(worst * MARGIN if worst > 0 else worst + 1e-9))
    return point


def hypervolume_figure(run: RunRecord) -> tuple[go.Figure | None, str]:
    """Dominated hypervolume after each complete trial (higher is better) and a note on the reference point."""
    if len(run.study.directions) < 2:
        return None, "a single objective has no hypervolume"
    point = reference_point(run)
    if point is None:
        return None, "no complete trial yet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figure = optuna.visualization.plot_hypervolume_history(run.study, point)
    described = ", ".join(f"{UNITS.get(n, n)} {v:.4g}" for n, v in zip(run.record.objectives, point))
    figure.update_layout(title=f"hypervolume over trials (reference point: {described})", height=420)
    for trace in figure.data:
        trace.meta = "hypervolume"
    return figure, f"reference point: {described}"


def _loss_target(run: RunRecord):
    index = run.record.objectives.index("loss")
    return lambda trial: trial.values[index]


def importance_figure(run: RunRecord) -> tuple[go.Figure | None, str]:
    """Which searched knobs explain the held-out loss (Optuna's default importance evaluator)."""
    complete = _scored(run)
    if len(complete) < 2:
        return None, f"needs at least 2 complete trials ({len(complete)} so far)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # PED-ANOVA's reminder that low targets are the good ones
            figure = optuna.visualization.plot_param_importances(
                _scored_study(run), target=_loss_target(run), target_name="held-out loss"
            )
    except (RuntimeError, ValueError, ZeroDivisionError) as error:  # e.g. every parameter constant so far
        return None, f"not available yet: {error}"
    if not figure.data:
        return None, "no searched parameter varies across the complete trials yet"
    knobs = len(figure.data[0].y or [])  # the searched knobs it ranks, one bar each
    title = f"parameter importances for the held-out loss ({len(complete)} complete trials, {knobs} knobs)"
    note = (f"Estimated by Optuna from {len(complete)} complete trials over {knobs} searched knobs: a rank says "
            "how much of the loss's spread across these trials a knob's values explain.")
    if len(complete) < knobs:
        # With fewer trials than knobs a knob's "importance" mostly says which knobs happened to vary with the
        # loss in these few trials; ranking them without saying so read as a finding.
        title += ": fewer trials than knobs, mostly noise"
        note += (f" With fewer trials ({len(complete)}) than knobs ({knobs}) the ranks are mostly noise: read "
                 "them only once many more trials have completed.")
    figure.update_layout(title=title, height=160 + 26 * knobs)  # room for every knob's label (at 22 px, every other one was dropped)
    return figure, note


def parallel_figure(run: RunRecord, max_params: int = PARALLEL_PARAMS) -> tuple[go.Figure | None, str]:
    """Every complete trial as a line through its most important knobs, coloured by held-out loss."""
    complete = _scored(run)
    if len(complete) < 2:
        return None, f"needs at least 2 complete trials ({len(complete)} so far)"
    study = _scored_study(run)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            # A big space has dozens of per-layer knobs: keep the axes that explain the loss best.
            ranked = optuna.importance.get_param_importances(study, target=_loss_target(run))
            params = list(ranked)[:max_params] or None
            figure = optuna.visualization.plot_parallel_coordinate(
                study, params=params, target=_loss_target(run), target_name="held-out loss"
            )
    except (RuntimeError, ValueError, ZeroDivisionError) as error:
        return None, f"not available yet: {error}"
    figure.update_layout(
        title=f"parallel coordinates of the complete trials ({max_params} most important knobs; colour: held-out loss)",
        height=480,
    )
    return figure, ""
