"""A search run read back: its directory and study, as typed records.

What `sslc-report`, `sslc-retrain`, `sslc-export`, `sslc-probe` and `sslc-dashboard` share. It reads the run
directory the search wrote (see `storage`) without importing the search driver, so these commands start
quickly and never pull in Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import optuna

from sslc.errors import UserError

from .storage import load_study
from .study import StudyRecord
from .trials import Outcome, TrialRecord, front_trials, read_trials

TRIALS_DIR, RETRAIN_DIR = "trials", "retrain"
ANYTIME_DIR = "anytime"  # --mode anytime: the once-for-all checkpoint of the shared weights


@dataclass
class RunRecord:
    run_dir: Path
    study: optuna.Study

    @property
    def name(self) -> str:
        return self.study.study_name

    @cached_property
    def record(self) -> StudyRecord:
        """The study's search-wide record, read once (call `reload()` after writing to the study)."""
        return StudyRecord.read(self.study)

    def reload(self) -> None:
        self.__dict__.pop("record", None)

    def trials(self, states=None) -> list[TrialRecord]:
        return read_trials(self.study, states)

    def front(self) -> list[TrialRecord]:
        """The non-dominated COMPLETE trials, by MACs (empty when none completed); a repeat of a config is never
        one of them (its original is)."""
        return [TrialRecord.read(t) for t in front_trials(self.study)]

    def trial(self, number: int) -> TrialRecord:
        trials = self.study.get_trials(deepcopy=False)
        matches = [t for t in trials if t.number == number]
        if not matches:
            last = f"0..{trials[-1].number}" if trials else "none yet"
            raise UserError(f"run '{self.name}' has no trial {number} (trials: {last})")
        return TrialRecord.read(matches[0])

    def complete_trial(self, number: int) -> TrialRecord:
        """Trial `number`, which must have finished its short training (COMPLETE); else a one-line UserError."""
        trial = self.trial(number)
        if trial.outcome == Outcome.COMPLETE:
            return trial
        reason = trial.fail_reason
        why = {
            Outcome.INFEASIBLE: f"was never trained ({reason or 'over budget'})",
            Outcome.PRUNED: f"was stopped early at step {trial.stopped_at_step or '?'} (pruned)",
            Outcome.FAILED: f"failed ({reason or 'no reason recorded'})",
            Outcome.INTERRUPTED: "was interrupted and never finished",
            Outcome.REPEAT: f"repeats the config of trial {trial.repeat_of} and was not trained again "
            f"(pick trial {trial.repeat_of})",
            Outcome.RUNNING: "is still running",
        }[trial.outcome]
        raise UserError(f"trial {number} of run '{self.name}' {why}: pick a COMPLETE trial")

    def trial_dir(self, number: int) -> Path:
        return self.run_dir / TRIALS_DIR / str(number)

    def retrain_dir(self, number: int) -> Path:
        return self.run_dir / RETRAIN_DIR / str(number)

    @property
    def anytime_dir(self) -> Path:
        return self.run_dir / ANYTIME_DIR


def open_run(run_dir: str | Path) -> RunRecord:
    """The run in `run_dir` (a directory written by sslc-search); UserError when there is none."""
    if "://" in str(run_dir):
        raise UserError(f"give the search's run directory, not a storage URL ({run_dir})")
    study = load_study(run_dir)
    return RunRecord(Path(run_dir).resolve(), study)
