"""Optuna decides, Ray Tune executes: a Tune `Searcher` that drives Optuna's ask/tell on the study.

Ray's own OptunaSearch is not used because it records trials wrongly for this tool: scheduler-stopped trials
become COMPLETE with partial scores (and can land on the Pareto front), and a missing or NaN metric leaves a
trial RUNNING forever. Driving ask/tell here gives every trial its right final state.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, replace

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sslc.budget import Budget
from sslc.compress import CompressionConfig, config_key
from sslc.errors import SearchFailed, UserError, one_line
from sslc.metrics import count_macs, count_macs_superb, count_params_from_config
from sslc.models import EncoderConfig
from sslc.runs import trials as record
from sslc.runs.study import METRIC_NAMES
from sslc.runs.trials import (
    Outcome,
    TrialRecord,
    count_trained,
    mark_interrupted,
    pending_retries,
)
from sslc.spaces import SearchSpace

from .scheduler import RUNG_FIDELITY

# How many over-budget configs in a row before the space is judged hopeless for this budget (each is an infeasible
# trial in the study). The runner refuses up front budgets that fewer than 2% of random configs meet, and for those it
# accepts 300 misses in a row are unlikely while the sampler still draws at random (0.98^300 < 0.3%).
MAX_INFEASIBLE_IN_A_ROW = 300
STARTUP_DRAWS = 1000  # random draws to find a start-up config within the budget
# How many already-tried configs in a row before the space is judged exhausted (a small discrete space).
MAX_REPEATS_IN_A_ROW = 200
# The placeholder objective values of an over-budget config (see `OptunaAskTellSearcher.placeholder_values`), from
# those of the trained trials: the MACs objective is measured, never a placeholder.
PLACEHOLDER = {"loss": min, "latency": max}


def _unflattened(result: dict, key: str) -> dict:
    """`result` with the dict `key` put back together: Tune flattens a nested dict in a trial's reported
    metrics into "key/field" entries (the driver's baselines never go through Tune and keep theirs)."""
    prefix = f"{key}/"
    fields = {name[len(prefix):]: value for name, value in result.items() if name.startswith(prefix)}
    return {**result, key: fields} if fields and key not in result else result


def _failed(result: dict | None, error: bool) -> bool:
    """Whether a trial's last report says it failed (crashed, raised, non-finite), not finished or stopped."""
    return error or result is None or (bool(result.get("final")) and result.get("status") != "completed")


def _failure_reason(result: dict | None, error: bool) -> str:
    if error or result is None:
        return record.CRASHED_REASON
    reason = result.get("reason") or f"trial ended with status {result.get('status')}"
    return f"non-finite loss: {reason}" if result.get("status") == "nonfinite" else reason


def _fidelity_scores(result: dict) -> dict[int, float]:
    """{fidelity: held-out score} of a trial's report (empty for a report from before --fidelities)."""
    return {int(f): float(loss) for f, loss in result.get("heldout_loss_by_fidelity_pairs") or []}


def uses_constraints(study: optuna.Study) -> bool:
    """Whether the study gives its samplers the budget as constraint values (sslc since issue 13). A study an
    older sslc wrote holds COMPLETE trials without them, and Optuna's GPSampler refuses a mix (every complete
    trial must carry the same constraints; a finished trial cannot be given them afterwards), so such a study is
    resumed the old way: over-budget configs told as FAIL, no constraint values."""
    return all(record.has_constraints(t) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def fault(what: str, error: Exception) -> SearchFailed:
    """One line naming the part that failed and the error; a storage error is named as such."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(error, SQLAlchemyError):
        what = f"{what}: the study storage failed"
    return SearchFailed(f"{what}: {one_line(error)}")


@dataclass
class Candidate:
    """A config the search will train, with everything known about it before training."""

    trial: optuna.Trial
    config: object  # CompressionConfig
    macs: int  # for the budget's seconds of audio
    breakdown: dict
    params: int
    macs_superb: int  # in the SUPERB profiler's convention


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
        startup_trials: int = 0,
        seed: int = 0,
        warm_start: Mapping[str, CompressionConfig] | None = None,
    ):
        """early_stopped: Tune trial ids the scheduler stopped (a live view); any other trial that ends without
        its final report was cut short by the user (Ctrl-C) and is recorded as interrupted, to be run again.
        startup_trials: the sampler's random start-up (see `samplers.startup_trials`); the first that many
        trials of the study are drawn at random by the searcher itself, within the budget (seeded by `seed`).
        warm_start: named configs (the anchors' shapes) asked first, as the space's nearest configs (`params_near`),
        narrowed to the budget where needed, each once; they take the first places of the start-up."""
        super().__init__(metric=None, mode=None)  # Tune would demand the metric in every report
        self.study, self.space, self.teacher_config = study, space, teacher_config
        self.budget, self.objectives, self.target_trials = budget, objectives, target_trials
        self.on_event = on_event or (lambda kind, trial: None)
        self.constrained = uses_constraints(study)
        self.startup_trials = startup_trials
        self.warm_start = self._within_budget(warm_start or {})
        # Seeded with the trials already in the study, as the sampler is: a resumed search draws new configs.
        self.rng = random.Random(seed + len(study.get_trials(deepcopy=False)))
        self.running: dict[str, optuna.Trial] = {}
        # Each running multi-fidelity trial's report at its last rung: what it is recorded at if it fails later.
        self.last_rung: dict[str, dict] = {}
        self.early_stopped = early_stopped
        self.started = count_trained(study)
        # Interrupted trials of an earlier run, queued again one at a time just before asking, so a study
        # stopped at any moment holds no WAITING trial.
        self.retries = pending_retries(study)
        # config key -> the earlier trial that answers a repeat of it (trained, or recognised as over budget).
        self.answers: dict[str, optuna.trial.FrozenTrial] = {}
        for frozen in study.get_trials(deepcopy=False):
            self._remember(frozen)

    # Tune pickles its searcher to save experiment state; the study (its connection) stays out: resuming goes
    # through Optuna's storage, never through Tune's experiment restore.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items()
                if k not in ("study", "on_event", "running", "answers", "last_rung")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, study=None, on_event=lambda kind, trial: None, running={}, answers={},
                             last_rung={})

    # ---- asking ------------------------------------------------------------------------------------------
    def measure(self, config) -> tuple[int, dict, int, int]:
        """MACs for the budget's seconds, their breakdown, params, and MACs in the SUPERB convention."""
        arch = config.student_architecture(self.teacher_config)
        breakdown = count_macs(arch, seconds=self.budget.seconds)
        return breakdown.total, breakdown.as_dict(), count_params_from_config(arch), count_macs_superb(arch)

    def fits(self, config) -> bool:
        """Whether `config` is within the budget (MACs in the budget's convention, and params)."""
        macs, _, size, superb = self.measure(config)
        return not self.budget.violations(superb if self.budget.convention == "superb" else macs, size)

    def _within_budget(self, configs: Mapping[str, CompressionConfig]) -> list[tuple[str, dict]]:
        """(name, params) of the space's nearest config to each of `configs`, its FFN narrowed (in steps of a
        tenth) until it fits the budget where it does not: an anchor's shape at the budget. Without repeats, in
        order; a shape that does not fit even so is left out."""
        chosen, seen = [], set()
        for name, config in configs.items():
            for tenths in range(10, 0, -1):
                narrowed = replace(config, ffn=[max(1, round(f * tenths / 10)) for f in config.ffn])
                nearest, params = self.space.params_near(narrowed, self.teacher_config)
                if self.fits(nearest):
                    key = config_key(nearest.to_dict())
                    if key not in seen:
                        chosen.append((name, params))
                        seen.add(key)
                    break
        return chosen

    def _ask(self) -> optuna.Trial:
        asked = len(self.study.get_trials(deepcopy=False))
        if self.retries:
            number, params = self.retries.pop(0)
            self.study.enqueue_trial(params, user_attrs=record.retry_attrs(number), skip_if_exists=False)
        elif asked < len(self.warm_start):
            # A known-good shape first: a model-based sampler then starts from where the anchors are, and no
            # search ends with a front below them for want of sampling their region.
            name, params = self.warm_start[asked]
            self.study.enqueue_trial(params, user_attrs={"warm_start": name}, skip_if_exists=False)
        elif asked < self.startup_trials:
            # Within the budget by construction: a sampler's random start-up knows nothing of the budget (and on a
            # tight one would fill the study with over-budget configs), so the searcher draws these itself.
            params = self._random_within_budget()
            if params is not None:
                self.study.enqueue_trial(params, skip_if_exists=False)
        return self.study.ask()

    def _random_within_budget(self) -> dict | None:
        """The params of a config drawn uniformly from the space among those within the budget (None when
        STARTUP_DRAWS draws found none: the sampler's own random draw is asked then)."""
        for _ in range(STARTUP_DRAWS):
            config, params = self.space.sample_with_params(self.teacher_config, self.rng)
            if self.fits(config):
                return params
        return None

    def next_feasible(self) -> Candidate:
        """Ask until a config fits the budget and was not tried before. Over-budget ones are recorded as
        infeasible, repeats are answered from the earlier trial; neither is trained. Every asked trial carries
        the budget's constraint values (negative: within it), so the samplers learn where the budget ends."""
        infeasible = repeats = 0
        while True:
            try:
                trial = self._ask()
                config = self.space.suggest(trial, self.teacher_config)
            except UserError:
                raise
            except Exception as error:
                raise fault(f"the {type(self.study.sampler).__name__} sampler failed", error) from error
            macs, breakdown, params, superb = self.measure(config)
            budgeted = superb if self.budget.convention == "superb" else macs
            record.write_asked(trial, config.to_dict(), macs, breakdown, params, self.budget.max_macs - budgeted, superb)
            if self.constrained:
                record.write_constraints(trial, self.budget.constraints(budgeted, params))
            violations = self.budget.violations(budgeted, params)
            earlier = self.answers.get(config_key(config.to_dict()))
            if earlier is not None:
                self._answer_repeat(trial, earlier, macs if violations else None)
                repeats += 1
                if repeats >= MAX_REPEATS_IN_A_ROW:
                    raise UserError(
                        f"the sampler proposed {repeats} configs in a row that were already tried: space "
                        f"'{self.space.name}' looks exhausted ({len(self.answers)} distinct configs tried)"
                    )
                continue
            repeats = 0
            if not violations:
                return Candidate(trial, config, macs, breakdown, params, superb)
            record.write_infeasible(trial, "infeasible (not trained): " + "; ".join(violations))
            self._remember(self._tell_infeasible(trial, macs))
            self.on_event("infeasible", None)
            infeasible += 1
            if infeasible >= MAX_INFEASIBLE_IN_A_ROW:
                raise UserError(
                    f"{MAX_INFEASIBLE_IN_A_ROW} configs in a row were over budget: the budget is too tight for "
                    f"space '{self.space.name}' (raise --budget or use a space with smaller configs)"
                )

    def _tell_infeasible(self, trial: optuna.Trial, macs: int) -> optuna.trial.FrozenTrial:
        """An over-budget config, never trained, told to Optuna: COMPLETE with placeholder values when the
        study has constraints and something was trained (its positive constraint value marks it infeasible to
        the samplers, its INFEASIBLE mark to sslc), else FAIL as before."""
        values = self.placeholder_values(macs) if self.constrained else None
        if values is None:
            return self.study.tell(trial, state=TrialState.FAIL)
        return self.study.tell(trial, values)

    def placeholder_values(self, macs: int) -> list[float] | None:
        """Objective values for an over-budget config, which is never trained (None: nothing trained yet).

        TPE and NSGA-II never look at an infeasible trial's values (TPE ranks it by its constraint violation,
        NSGA-II's constrained domination puts every feasible trial first), and no hypervolume counts them; only
        GPSampler fits its objective models on every COMPLETE trial, feasible or not, so the values shape what
        it believes about configs near the budget's edge. The MACs are exact. The loss and latency are unknown;
        an over-budget config is bigger than what the budget allows, and bigger students lose less and run
        slower, so each gets the extreme of the trained trials that the size trend points to (PLACEHOLDER): the
        lowest loss and the highest latency so far. The opposite, a worst-loss placeholder, would tell the GP
        that losses rise towards the edge, where the best within-budget students are; the constraint model,
        not the loss model, is what keeps the sampler inside the budget."""
        trained = [
            t.values for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if record.outcome_of(t) == Outcome.COMPLETE and t.values
        ]
        if not trained:
            return None
        values = []
        for i, name in enumerate(self.objectives):
            if name == "macs":
                values.append(macs / 1e9)
            else:
                values.append(PLACEHOLDER[name](v[i] for v in trained))
        return values

    def _remember(self, trial: optuna.trial.FrozenTrial) -> None:
        """Keep a finished trial that can answer later repeats of its config: trained ones (complete, pruned,
        failed) and over-budget ones. Interrupted trials never finished, so their config is run again."""
        earlier = TrialRecord.read(trial)
        if earlier.config is not None and (earlier.outcome.trained or earlier.outcome == Outcome.INFEASIBLE):
            self.answers.setdefault(config_key(earlier.config), trial)

    def _answer_repeat(self, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial, over_budget_macs: int | None) -> None:
        """The config of `earlier` again: answer from its result instead of training it twice.

        The repeat is told to Optuna in the earlier trial's state and, when COMPLETE, with its values: the
        sampler then sees the point as already measured and moves on (a FAIL would be invisible to the GP and
        TPE models, which could propose the same point again and again). Its outcome is REPEAT: off the front and
        out of the trained count. `over_budget_macs`: its MACs when the config is over budget (known before training),
        told like any over-budget config (placeholders as of now); one over the latency limit (measured by its
        trial) is FAIL like its original."""
        record.write_repeat(trial, earlier)
        if over_budget_macs is not None:
            self._tell_infeasible(trial, over_budget_macs)
        elif earlier.state == TrialState.COMPLETE:
            self.study.tell(trial, list(earlier.values))
        else:
            self.study.tell(trial, state=earlier.state)
        self.on_event("repeat", None)

    def suggest(self, trial_id: str):
        if self.started >= self.target_trials:
            return Searcher.FINISHED
        try:
            candidate = self.next_feasible()
        except UserError:
            raise
        except Exception as error:  # e.g. the storage, while recording what was asked
            raise fault("choosing the next config failed", error) from error
        self.started += 1
        self.running[trial_id] = candidate.trial
        self.on_event("started", None)
        return {
            "trial_number": candidate.trial.number,
            "config": candidate.config.to_dict(),
            "macs": candidate.macs,
            "params": candidate.params,
            "warm_start": candidate.trial.user_attrs.get("warm_start"),  # the scheduler never stops these
        }

    # ---- telling -----------------------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A trial scored at a rung (multi-fidelity): its scores so far go on the running trial at once, so a
        search stopped while it trains on to the next rung still holds what it reached."""
        trial = self.running.get(trial_id)
        if trial is not None and result.get(RUNG_FIDELITY) is not None:
            record.write_fidelity(trial, _fidelity_scores(result))
            self.last_rung[trial_id] = result

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        trial = self.running.pop(trial_id, None)
        rung = self.last_rung.pop(trial_id, None)
        if trial is None:
            return
        if not error and result is not None and not result.get("final") and trial_id not in self.early_stopped:
            mark_interrupted(self.study, trial)
            self.on_event("interrupted", None)
            return
        if rung is not None and _failed(result, error):
            # Scored and saved at a rung, then it failed training on to the next: complete at that rung (its
            # student there is saved), the failure said, rather than a failed trial that loses finished work.
            record.write_failed(trial, f"complete at fidelity {rung[RUNG_FIDELITY]}; training on to the next rung "
                                       f"failed: {_failure_reason(result, error)}")
            result, error = rung, False
        try:
            state, values = self._outcome(trial, result, error)
            if state == TrialState.COMPLETE:
                frozen = self.study.tell(trial, values)
            else:
                frozen = self.study.tell(trial, state=state)
        except Exception as failure:
            self.running[trial_id] = trial  # still unrecorded: the search's clean-up marks it interrupted
            raise fault(f"recording trial {trial.number} failed", failure) from failure
        self._remember(frozen)
        self.on_event(state.name.lower(), frozen)

    def _outcome(self, trial: optuna.Trial, result: dict | None, error: bool):
        if error or result is None:
            record.write_failed(trial, _failure_reason(result, error))
            return TrialState.FAIL, None
        record.write_measurements(trial, _unflattened(result, "latency_measurement"))
        if not result.get("final") and result.get(RUNG_FIDELITY) is None:
            # Stopped by the scheduler: its scores are partial, so it must never reach the Pareto front.
            record.write_pruned(trial, result.get("step"), result.get("train_loss"), result.get("seconds_elapsed"))
            return TrialState.PRUNED, None
        status = result.get("status")
        if status != "completed":
            record.write_failed(trial, _failure_reason(result, error), infeasible=status == "infeasible")
            return TrialState.FAIL, None
        # A multi-fidelity trial (stopped at a rung, or at the top) is told its score at the first rung, which every
        # trial reached after the same training: the sampler never compares scores of different fidelities.
        scores = _fidelity_scores(result)
        result = dict(result, gmacs=result["macs"] / 1e9, heldout_loss=scores[min(scores)] if scores else
                      result["heldout_loss"])
        values = [result.get(METRIC_NAMES[name]) for name in self.objectives]
        if any(v is None or not math.isfinite(v) for v in values):
            record.write_failed(trial, f"non-finite or missing objective values {values}")
            return TrialState.FAIL, None
        by_target = {str(key): float(value) for key, value in result["heldout_loss_by_target_pairs"]}
        # The trial's own score is the one at the fidelity it reached (the front's, see `front_trials`).
        record.write_scores(trial, scores[max(scores)] if scores else result["heldout_loss"], by_target)
        if scores:
            record.write_fidelity(trial, scores)
        return TrialState.COMPLETE, values

    def abandon_running(self) -> None:
        """Called when the search stops with trials in flight: none may stay RUNNING in the study."""
        for trial_id in list(self.running):
            mark_interrupted(self.study, self.running.pop(trial_id))
