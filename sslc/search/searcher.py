"""Optuna decides, Ray Tune executes: a Tune `Searcher` that drives Optuna's ask/tell on the study.

Ray's own OptunaSearch is not used because it records trials wrongly for this tool: scheduler-stopped trials
become COMPLETE with partial scores (and can land on the Pareto front), and a missing or NaN metric leaves a
trial RUNNING forever. Driving ask/tell here gives every trial its right final state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sslc.errors import UserError
from sslc.metrics import count_macs, count_params_from_config
from sslc.models import EncoderConfig
from sslc.spaces import SearchSpace

from .budget import Budget
from .storage import INTERRUPTED, count_trained

# How many over-budget configs in a row before the space is judged hopeless for this budget (each is a FAIL trial
# in the study). The runner refuses up front budgets that fewer than 2% of random configs meet, and for those it
# accepts 300 misses in a row are unlikely while the sampler still draws at random (0.98^300 < 0.3%).
MAX_INFEASIBLE_IN_A_ROW = 300
OBJECTIVE_ATTRS = {"loss": "heldout_loss", "macs": "gmacs", "latency": "latency_ms"}


@dataclass
class Candidate:
    """A config the search will train, with everything known about it before training."""

    trial: optuna.Trial
    config: object  # CompressionConfig
    macs: int
    breakdown: dict
    params: int


class OptunaAskTellSearcher(Searcher):
    def __init__(
        self,
        study: optuna.Study,
        space: SearchSpace,
        teacher_config: EncoderConfig,
        budget: Budget,
        objectives: list[str],
        target_trials: int,
        on_event: Callable[[str, optuna.trial.FrozenTrial | None], None] | None = None,
        early_stopped: Container[str] = (),
    ):
        """early_stopped: Tune trial ids the scheduler stopped (a live view); any other trial that ends without
        its final report was cut short by the user (Ctrl-C) and is recorded as interrupted, to be run again."""
        super().__init__(metric=None, mode=None)  # Tune would demand the metric in every report
        self.study, self.space, self.teacher_config = study, space, teacher_config
        self.budget, self.objectives, self.target_trials = budget, objectives, target_trials
        self.on_event = on_event or (lambda kind, trial: None)
        self.running: dict[str, optuna.Trial] = {}
        self.early_stopped = early_stopped
        self.started = count_trained(study)

    # Tune pickles its searcher to save experiment state; the study (its connection) stays out: resuming goes
    # through Optuna's storage, never through Tune's experiment restore.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("study", "on_event", "running")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, study=None, on_event=lambda kind, trial: None, running={})

    # ---- asking ------------------------------------------------------------------------------------------
    def measure(self, config) -> tuple[int, dict, int]:
        arch = config.student_architecture(self.teacher_config)
        breakdown = count_macs(arch, seconds=self.budget.seconds)
        return breakdown.total, breakdown.as_dict(), count_params_from_config(arch)

    def next_feasible(self) -> Candidate:
        """Ask until a config fits the budget; the ones that do not are recorded as infeasible, never trained."""
        for _ in range(MAX_INFEASIBLE_IN_A_ROW):
            trial = self.study.ask()
            config = self.space.suggest(trial, self.teacher_config)
            macs, breakdown, params = self.measure(config)
            trial.set_user_attr("config", config.to_dict())
            trial.set_user_attr("macs", macs)
            trial.set_user_attr("macs_breakdown", breakdown)
            trial.set_user_attr("params", params)
            trial.set_user_attr("budget_slack_macs", self.budget.max_macs - macs)
            violations = self.budget.violations(macs, params)
            if not violations:
                return Candidate(trial, config, macs, breakdown, params)
            trial.set_user_attr("infeasible", True)
            trial.set_user_attr("fail_reason", "infeasible (not trained): " + "; ".join(violations))
            self.study.tell(trial, state=TrialState.FAIL)
            self.on_event("infeasible", None)
        raise UserError(
            f"{MAX_INFEASIBLE_IN_A_ROW} configs in a row were over budget: the budget is too tight for space "
            f"'{self.space.name}' (raise --budget or use a space with smaller configs)"
        )

    def suggest(self, trial_id: str):
        if self.started >= self.target_trials:
            return Searcher.FINISHED
        candidate = self.next_feasible()
        self.started += 1
        self.running[trial_id] = candidate.trial
        self.on_event("started", None)
        return {
            "trial_number": candidate.trial.number,
            "config": candidate.config.to_dict(),
            "macs": candidate.macs,
            "params": candidate.params,
        }

    # ---- telling -----------------------------------------------------------------------------------------
    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trial = self.running.pop(trial_id, None)
        if trial is None:
            return
        if not error and result is not None and not result.get("final") and trial_id not in self.early_stopped:
            self._interrupted(trial, INTERRUPTED)
            self.on_event("interrupted", None)
            return
        state, values = self._outcome(trial, result, error)
        if state == TrialState.COMPLETE:
            self.study.tell(trial, values)
        else:
            self.study.tell(trial, state=state)
        self.on_event(state.name.lower(), self.study._storage.get_trial(trial._trial_id))

    def _outcome(self, trial: optuna.Trial, result: dict | None, error: bool):
        if error or result is None:
            trial.set_user_attr("fail_reason", "the trial's process crashed (see the Ray logs in the run directory)")
            return TrialState.FAIL, None
        for key in ("latency_ms", "nonzero_params", "train_curve", "seconds_training", "steps_done"):
            if key in result:
                trial.set_user_attr(key, result[key])
        if not result.get("final"):
            # Stopped by the scheduler: its scores are partial, so it must never reach the Pareto front.
            trial.set_user_attr("stopped_at_step", result.get("step"))
            trial.set_user_attr("last_train_loss", result.get("train_loss"))
            return TrialState.PRUNED, None
        status = result.get("status")
        if status != "completed":
            reason = result.get("reason") or f"trial ended with status {status}"
            if status == "nonfinite":
                reason = f"non-finite loss: {reason}"
            trial.set_user_attr("fail_reason", reason)
            if status == "infeasible":
                trial.set_user_attr("infeasible", True)
            return TrialState.FAIL, None
        result = dict(result, gmacs=result["macs"] / 1e9)
        values = [result.get(OBJECTIVE_ATTRS[name]) for name in self.objectives]
        if any(v is None or not math.isfinite(v) for v in values):
            trial.set_user_attr("fail_reason", f"non-finite or missing objective values {values}")
            return TrialState.FAIL, None
        trial.set_user_attr("heldout_loss", result["heldout_loss"])
        return TrialState.COMPLETE, values

    def abandon_running(self, reason: str) -> None:
        """Called when the search stops with trials in flight: none may stay RUNNING in the study."""
        for trial_id in list(self.running):
            self._interrupted(self.running.pop(trial_id), reason)

    def _interrupted(self, trial: optuna.Trial, reason: str) -> None:
        """FAIL with the reason, and the same config queued again: an interrupted trial is run again on resume."""
        trial.set_user_attr("fail_reason", reason)
        trial.set_user_attr("interrupted", True)
        self.study.tell(trial, state=TrialState.FAIL)
        if trial.params:  # stopped before its config was chosen: nothing to run again
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
