"""What one trial of a study records, written and read in one place.

A trial's measurements live in Optuna user attrs (a finished trial's values hold only the objectives). The keys
below are the stored format: every writer (the searcher, the recovery of interrupted trials) and every reader
(progress, Pareto files, report, retrain, export) goes through this module, so a key has one spelling and an
outcome one definition.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

# ---- the stored keys ------------------------------------------------------------------------------------------
CONFIG = "config"  # the CompressionConfig as a dict
MACS = "macs"  # exact MACs for the study's budget seconds (an int; the "gmacs" objective is this / 1e9)
MACS_BREAKDOWN = "macs_breakdown"
MACS_SUPERB = "macs_superb"  # MACs in the SUPERB profiler's convention (the published tables')
PARAMS = "params"
BUDGET_SLACK = "budget_slack_macs"  # the budget minus the MACs, in the budget's convention
INFEASIBLE = "infeasible"  # True: over budget, never trained (whatever its Optuna state: see `outcome_of`)
FAIL_REASON = "fail_reason"
INTERRUPTED = "interrupted"  # True: the search stopped while it ran; its config runs again on resume
RETRY_PARAMS = "retry_params"  # the params of an interrupted trial, to run again on resume
RETRY_OF = "retry_of"  # on a retry: the interrupted trial it runs again
REPEAT_OF = "repeat_of"  # on a repeat: the earlier trial with the same config that answers it (never trained)
HELDOUT_LOSS = "heldout_loss"
HELDOUT_LOSS_BY_TARGET = "heldout_loss_by_target"
# Multi-fidelity search (--fidelities): the highest fidelity (a multiple of the study's --steps) the trial was
# trained and scored at, and its held-out score at every fidelity it reached ({"1": ..., "3": ...}). Its
# HELDOUT_LOSS and HELDOUT_LOSS_BY_TARGET are those at FIDELITY; its Optuna values hold the fidelity-1 score (what
# the sampler is told). A trial without them (single fidelity, or sslc before --fidelities) is at fidelity 1.
FIDELITY = "fidelity"
HELDOUT_LOSS_BY_FIDELITY = "heldout_loss_by_fidelity"
STOPPED_AT_STEP = "stopped_at_step"
LAST_TRAIN_LOSS = "last_train_loss"
# A pruned trial's wall seconds from its start (build, latency, head fit, training) to its last report: what the
# search spent on it, which its never-finished measured parts (seconds_*) cannot say.
SECONDS_UNTIL_STOPPED = "seconds_until_stopped"
# What a finished trial's report carries and the trial keeps as is ("latency_measurement": how its latency was
# timed, `LatencyResult.conditions`; "train_device": the device and precision it trained on; the artifact keys:
# what bringing its files back cost; "node": which machine ran it).
# seconds_*: where a trial's wall time went besides training (see sslc.search.trial.train_and_measure).
SECONDS_PARTS = ("seconds_build_student", "seconds_latency", "seconds_head_fit", "seconds_data", "seconds_heldout",
                 "seconds_save")
MEASUREMENTS = ("latency_ms", "latency_measurement", "nonzero_params", "train_curve", "seconds_training",
                *SECONDS_PARTS, "steps_done", "artifact_bytes", "artifact_seconds", "node", "train_device")
# Keys that say where a trial came from, not what it measured: never copied onto a repeat.
LINEAGE = (RETRY_OF, REPEAT_OF, RETRY_PARAMS, INTERRUPTED)

INTERRUPTED_REASON = "interrupted: the search stopped while this trial ran (it is run again on resume)"
CRASHED_REASON = "the trial's process crashed (see the Ray logs in the run directory)"


class Outcome(enum.Enum):
    """What became of a trial. FAIL in Optuna is three outcomes here (infeasible, failed, interrupted), and
    COMPLETE two or three (complete, repeat, and infeasible: an over-budget config is told to Optuna as COMPLETE
    with a positive constraint value, see `write_infeasible`, so the samplers learn where the budget ends)."""

    COMPLETE = "complete"
    PRUNED = "pruned"  # stopped early by the scheduler: partial scores, never on the front
    INFEASIBLE = "infeasible"  # over budget: never trained
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the search stopped while it ran: run again on resume
    REPEAT = "repeat"  # a config already tried, answered from that earlier trial: never trained
    RUNNING = "running"  # running, or queued (WAITING)

    @property
    def trained(self) -> bool:
        """Counts against --trials: trained to an end (complete, pruned or failed)."""
        return self in (Outcome.COMPLETE, Outcome.PRUNED, Outcome.FAILED)


def outcome_of(trial: FrozenTrial) -> Outcome:
    attrs = trial.user_attrs
    if attrs.get(INFEASIBLE):
        # Never trained, whether Optuna holds it as COMPLETE (placeholder values, positive constraint) or as FAIL
        # (sslc before constraints, or over budget before any trial was trained); an over-budget repeat too.
        return Outcome.INFEASIBLE
    if attrs.get(REPEAT_OF) is not None:
        return Outcome.REPEAT
    if trial.state == TrialState.COMPLETE:
        return Outcome.COMPLETE
    if trial.state == TrialState.PRUNED:
        return Outcome.PRUNED
    if trial.state == TrialState.FAIL:
        return Outcome.INTERRUPTED if attrs.get(INTERRUPTED) else Outcome.FAILED
    return Outcome.RUNNING


@dataclass
class TrialRecord:
    """One trial as read back from the study."""

    number: int
    state: TrialState
    outcome: Outcome
    values: list[float] | None
    params: dict  # the sampler's params (what a retry asks again)
    config: dict | None = None
    macs: int | None = None
    macs_breakdown: dict | None = None
    macs_superb: int | None = None
    model_params: int | None = None  # parameters of the student (`params` are the sampler's)
    budget_slack_macs: int | None = None
    heldout_loss: float | None = None
    heldout_loss_by_target: dict[str, float] | None = None
    latency_ms: float | None = None
    latency_measurement: dict | None = None  # threads, device, repeats, load: `LatencyResult.conditions`
    nonzero_params: int | None = None
    train_curve: list = field(default_factory=list)
    seconds_training: float | None = None
    steps_done: int | None = None
    stopped_at_step: int | None = None
    last_train_loss: float | None = None
    seconds_until_stopped: float | None = None
    artifact_bytes: int | None = None
    artifact_seconds: float | None = None
    node: str | None = None
    fail_reason: str | None = None
    retry_of: int | None = None
    repeat_of: int | None = None
    retry_params: dict | None = None
    constraints: dict[str, float] = field(default_factory=dict)  # what the samplers see: > 0 is over a limit
    fidelity: int = 1  # see FIDELITY
    heldout_loss_by_fidelity: dict[int, float] = field(default_factory=dict)

    @classmethod
    def read(cls, trial: FrozenTrial) -> TrialRecord:
        a = trial.user_attrs
        return cls(
            number=trial.number, state=trial.state, outcome=outcome_of(trial),
            values=list(trial.values) if trial.values else None, params=dict(trial.params),
            config=a.get(CONFIG), macs=a.get(MACS), macs_breakdown=a.get(MACS_BREAKDOWN), macs_superb=a.get(MACS_SUPERB),
            model_params=a.get(PARAMS),
            budget_slack_macs=a.get(BUDGET_SLACK), heldout_loss=a.get(HELDOUT_LOSS),
            heldout_loss_by_target=a.get(HELDOUT_LOSS_BY_TARGET), latency_ms=a.get("latency_ms"),
            latency_measurement=a.get("latency_measurement"),
            nonzero_params=a.get("nonzero_params"), train_curve=list(a.get("train_curve") or []),
            seconds_training=a.get("seconds_training"), steps_done=a.get("steps_done"),
            stopped_at_step=a.get(STOPPED_AT_STEP), last_train_loss=a.get(LAST_TRAIN_LOSS),
            seconds_until_stopped=a.get(SECONDS_UNTIL_STOPPED),
            artifact_bytes=a.get("artifact_bytes"), artifact_seconds=a.get("artifact_seconds"), node=a.get("node"),
            fail_reason=a.get(FAIL_REASON), retry_of=a.get(RETRY_OF), repeat_of=a.get(REPEAT_OF),
            retry_params=a.get(RETRY_PARAMS), constraints=dict(trial.constraints),
            fidelity=int(a.get(FIDELITY) or 1),
            heldout_loss_by_fidelity={int(k): float(v) for k, v in (a.get(HELDOUT_LOSS_BY_FIDELITY) or {}).items()},
        )

    @property
    def gmacs(self) -> float | None:
        return self.macs / 1e9 if self.macs is not None else None

    def budgeted_macs(self, convention: str) -> int | None:
        """MACs as a budget in `convention` counts them."""
        return self.macs_superb if convention == "superb" else self.macs

    @property
    def last_step(self) -> int | None:
        """The step it stopped at (pruned), or the steps it trained, or the last step it reported."""
        return self.stopped_at_step or self.steps_done or (self.train_curve[-1][0] if self.train_curve else None)

    def explanation(self) -> str | None:
        """Why a trial has no score, in a line (None for a complete one)."""
        if self.outcome == Outcome.REPEAT:
            return f"same config as trial {self.repeat_of}: not trained again"
        return None if self.outcome == Outcome.COMPLETE else self.fail_reason


# ---- writing, on a trial the searcher holds ----------------------------------------------------------------------
def write_asked(
    trial: optuna.Trial, config: dict, macs: int, breakdown: dict, params: int, slack: int, macs_superb: int
) -> None:
    """What is known about a config before it is trained."""
    trial.set_user_attr(CONFIG, config)
    trial.set_user_attr(MACS, macs)
    trial.set_user_attr(MACS_BREAKDOWN, breakdown)
    trial.set_user_attr(MACS_SUPERB, macs_superb)
    trial.set_user_attr(PARAMS, params)
    trial.set_user_attr(BUDGET_SLACK, slack)


def write_constraints(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """The budget's constraint values (`Budget.constraints`), on every asked trial, feasible or not: Optuna's
    GP, TPE and NSGA-II samplers read them from the trial (`Trial.set_constraint`)."""
    for key, value in constraints.items():
        trial.set_constraint(key, value)


def has_constraints(trial: FrozenTrial) -> bool:
    return bool(trial.constraints)


def write_failed(trial: optuna.Trial, reason: str, infeasible: bool = False) -> None:
    trial.set_user_attr(FAIL_REASON, reason)
    if infeasible:
        trial.set_user_attr(INFEASIBLE, True)


def write_infeasible(trial: optuna.Trial, reason: str) -> None:
    """Over budget, never trained. The trial may then be told to Optuna as COMPLETE with placeholder values (the
    samplers see its positive constraint value); the INFEASIBLE mark keeps it out of everything sslc reads as
    trained: the front, the trained count, retries, the report."""
    write_failed(trial, reason, infeasible=True)


def write_measurements(trial: optuna.Trial, result: dict) -> None:
    """The measurements a trial's final (or last) report carries."""
    for key in MEASUREMENTS:
        if key in result:
            trial.set_user_attr(key, result[key])


def write_pruned(trial: optuna.Trial, step: int | None, train_loss: float | None, seconds: float | None) -> None:
    trial.set_user_attr(STOPPED_AT_STEP, step)
    trial.set_user_attr(LAST_TRAIN_LOSS, train_loss)
    trial.set_user_attr(SECONDS_UNTIL_STOPPED, seconds)


def write_scores(trial: optuna.Trial, heldout_loss: float, by_target: dict[str, float]) -> None:
    trial.set_user_attr(HELDOUT_LOSS, heldout_loss)
    trial.set_user_attr(HELDOUT_LOSS_BY_TARGET, by_target)


def write_fidelity(trial: optuna.Trial, scores: dict[int, float]) -> None:
    """The held-out score at every fidelity reached so far (a running trial's too: see the searcher)."""
    trial.set_user_attr(FIDELITY, max(scores))
    trial.set_user_attr(HELDOUT_LOSS_BY_FIDELITY, {str(f): loss for f, loss in sorted(scores.items())})


def write_repeat(trial: optuna.Trial, earlier: FrozenTrial) -> None:
    """Every result of `earlier` (whatever the trainer recorded, so the repeat reads like its original), and
    which trial it repeats."""
    for key, value in earlier.user_attrs.items():
        if key not in LINEAGE:
            trial.set_user_attr(key, value)
    trial.set_user_attr(REPEAT_OF, earlier.number)


def retry_attrs(number: int) -> dict:
    """The user attrs a retry of interrupted trial `number` is queued with."""
    return {RETRY_OF: number}


def mark_interrupted(study: optuna.Study, trial: FrozenTrial | optuna.Trial, reason: str = INTERRUPTED_REASON) -> None:
    """FAIL, marked interrupted, with its params kept to run again on resume (by the searcher, just before it
    asks: a stopped study holds no WAITING trial). For a trial in flight when the search stopped and for one a
    killed search left RUNNING or WAITING alike. Optuna cannot `tell` a WAITING trial, nor set attrs on a trial
    another process left behind, so this writes the study's storage directly (Optuna's storage API, reached
    through the study's private handle: the one place sslc does so)."""
    storage: BaseStorage = study._storage
    trial_id = trial._trial_id
    frozen = storage.get_trial(trial_id)
    params = frozen.params or frozen.system_attrs.get("fixed_params") or {}
    storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
    storage.set_trial_user_attr(trial_id, INTERRUPTED, True)
    if params and not frozen.user_attrs.get(INFEASIBLE):  # no params: stopped before its config was chosen
        storage.set_trial_user_attr(trial_id, RETRY_PARAMS, params)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


# ---- reading a study's trials -------------------------------------------------------------------------------------
def rung_history(study: optuna.Study) -> list[tuple[int, float, float]]:
    """(fidelity, held-out score, MACs) at every rung the COMPLETE trials of a multi-fidelity study were scored
    at, in trial order: what a resumed search's promotions are decided against."""
    return [(int(f), float(loss), float(t.user_attrs[MACS])) for t in _complete(study)
            for f, loss in (t.user_attrs.get(HELDOUT_LOSS_BY_FIDELITY) or {}).items()]


def stopping_history(study: optuna.Study, rungs: list[int]) -> list[tuple[int, float, float]]:
    """(rung, training loss there, MACs) of every trial of the study trained past an early-stopping rung (steps
    in `rungs`), in trial order: what a resumed search's early stopping compares against, as the first run's did.
    The loss is the first report at or past the rung (what `DominanceStopper.decide` records); a pruned trial
    keeps only its last report, so it counts at the rung it was stopped at. Repeats and over-budget configs were
    never trained and never peers."""
    history = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if not outcome_of(trial).trained or attrs.get(MACS) is None:
            continue
        macs = float(attrs[MACS])
        if trial.state == TrialState.PRUNED:
            step, loss = attrs.get(STOPPED_AT_STEP), attrs.get(LAST_TRAIN_LOSS)
            passed = [rung for rung in rungs if step is not None and rung <= step]
            if passed and loss is not None:
                history.append((passed[-1], float(loss), macs))
            continue
        curve = attrs.get("train_curve") or []
        for rung in rungs:
            point = next((point for point in curve if point[0] >= rung), None)
            if point is not None:
                history.append((rung, float(point[1]), macs))
    return history


def read_trials(study: optuna.Study, states=None) -> list[TrialRecord]:
    return [TrialRecord.read(t) for t in study.get_trials(deepcopy=False, states=states)]


def count_trained(study: optuna.Study) -> int:
    """How many trials count against --trials so far (over-budget configs, repeats and interrupted runs do not)."""
    return sum(outcome_of(t).trained for t in study.get_trials(deepcopy=False))


def pending_retries(study: optuna.Study) -> list[tuple[int, dict]]:
    """(trial number, params) of each interrupted trial whose config has not been queued again yet, in order.
    A retry carries `retry_of: <number>`; a retry that is itself interrupted gets its own retry."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    return [
        (t.number, t.user_attrs[RETRY_PARAMS])
        for t in trials
        if outcome_of(t) == Outcome.INTERRUPTED and t.user_attrs.get(RETRY_PARAMS) and t.number not in retried
    ]


def top_fidelity(study: optuna.Study) -> int:
    """The highest fidelity a COMPLETE trial reached (1 in a single-fidelity study)."""
    return max((int(t.user_attrs.get(FIDELITY) or 1) for t in _complete(study)), default=1)


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if outcome_of(t) == Outcome.COMPLETE and t.values]


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The non-dominated COMPLETE trials, repeats left out (a repeat has its original's values, so Optuna's own
    `study.best_trials` would list the same point twice), sorted by MACs then number.

    Built at the top fidelity (`top_fidelity`): only trials that reached it compete, their loss objective taken
    at it (the trial's HELDOUT_LOSS); trials scored only at lower fidelities are never on the front. In a
    single-fidelity study that is every COMPLETE trial on its values."""
    from .study import StudyRecord  # the objectives' order; study.py does not import this module

    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    objectives = StudyRecord.read(study).objectives
    loss_at = objectives.index("loss") if "loss" in objectives else None
    top = top_fidelity(study)

    def values(t: FrozenTrial) -> list[float]:
        own = list(t.values)
        if loss_at is not None and t.user_attrs.get(HELDOUT_LOSS_BY_FIDELITY):
            own[loss_at] = float(t.user_attrs[HELDOUT_LOSS_BY_FIDELITY][str(top)])
        return own

    points = [(t, [s * v for s, v in zip(signs, values(t))]) for t in _complete(study)
              if int(t.user_attrs.get(FIDELITY) or 1) == top]

    front = [t for t, p in points if not any(dominates(q, p) for _, q in points)]
    return sorted(front, key=lambda t: (t.user_attrs.get(MACS, 0), t.number))


def dominates(a, b) -> bool:
    """Whether point `a` dominates `b` (every value minimised): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_ranks(points: list) -> list[int]:
    """Each point's non-dominated rank, 1 for the Pareto front, 2 for the front of the rest, ... (the sorting of
    NSGA-II). Hand-written in O(n^2 x fronts): Optuna's fast non-dominated sort is private API, and a search's
    rungs hold tens of points."""
    ranks = [0] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        rank += 1
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
    return ranks
