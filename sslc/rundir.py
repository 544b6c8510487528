"""A finished (or running) search run, read back: its study, settings, teacher, budget and trials.

What `sslc-report`, `sslc-retrain`, `sslc-export` and `sslc-dashboard` share. It reads the run directory the
search wrote (`study.txt` names the storage URL and study; `study.db` is the default storage) without
importing the search driver, so these commands start quickly and never pull in Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from sslc.errors import UserError
from sslc.protocol import EvaluationProtocol
from sslc.search.storage import (
    REPEAT_OF,
    STUDY_DB,
    STUDY_MARKER,
    default_storage_url,
    front_trials,
    make_storage,
    objective_names,
    trial_category,
)

RETRAIN_PREFIX = "retrain:"  # study user attr per retrained trial (a finished trial's own attrs are frozen)


def retrain_key(number: int) -> str:
    return f"{RETRAIN_PREFIX}{number}"


def resolve_storage(run_dir_or_url: str | Path) -> tuple[str, str | None]:
    """(storage URL, study name or None) of a run directory, or of a storage URL given as is."""
    text = str(run_dir_or_url)
    if "://" in text:
        _check_sqlite_exists(text)
        return text, None
    run_dir = Path(text)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    marker = run_dir / STUDY_MARKER
    if marker.is_file():
        url, name = (marker.read_text().splitlines() + ["", ""])[:2]
        if url:
            _check_sqlite_exists(url)
            return url, name or None
    if (run_dir / STUDY_DB).is_file():
        return default_storage_url(run_dir), None
    raise UserError(
        f"{run_dir} holds no study yet (no {STUDY_MARKER} or {STUDY_DB}): either the search that made it failed "
        "before creating its study (rerun it), or it is not a sslc-search run directory"
    )


def _check_sqlite_exists(url: str) -> None:
    # Opening a missing SQLite file would silently create an empty database.
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_file():
            raise UserError(f"study database {path} does not exist")


def load_study(run_dir_or_url: str | Path) -> optuna.Study:
    """The one study of a run directory (or of a storage URL that holds exactly one)."""
    url, name = resolve_storage(run_dir_or_url)
    storage = make_storage(url)
    if name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        if len(names) != 1:
            raise UserError(f"{url} holds {len(names)} studies, not one: give the search's run directory")
        name = names[0]
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"no study named '{name}' in {url}") from None


@dataclass
class Run:
    run_dir: Path
    study: optuna.Study

    # ---- what the search recorded -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def settings(self) -> dict:
        return self.study.user_attrs.get("settings") or {}

    @property
    def identity(self) -> dict:
        return self.study.user_attrs.get("identity") or {}

    @property
    def teacher(self) -> dict:
        return self.study.user_attrs.get("teacher") or {}

    @property
    def budget(self) -> dict:
        return self.study.user_attrs.get("budget") or {}

    @property
    def protocol(self) -> EvaluationProtocol | None:
        """How every score of this run was measured (None for runs of an older sslc)."""
        stored = self.study.user_attrs.get("protocol")
        return EvaluationProtocol.from_dict(stored) if stored else None

    @property
    def baselines(self) -> list[dict]:
        return list(self.study.user_attrs.get("baselines") or [])

    @property
    def objective_names(self) -> list[str]:
        return objective_names(self.study)

    @property
    def budget_seconds(self) -> float:
        return float(self.budget.get("seconds") or self.identity.get("budget_seconds") or 10.0)

    def retrained(self) -> dict[int, dict]:
        """Trial number -> what sslc-retrain recorded for it (finished retrains only)."""
        return {
            int(key[len(RETRAIN_PREFIX) :]): value
            for key, value in self.study.user_attrs.items()
            if key.startswith(RETRAIN_PREFIX) and isinstance(value, dict)
        }

    def trials(self, states=None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def best_trials(self) -> list[FrozenTrial]:
        """The non-dominated COMPLETE trials, by MACs (empty when none completed); a repeat of a config is
        never one of them (its original is)."""
        return sorted(front_trials(self.study), key=lambda t: (t.user_attrs.get("macs", 0), t.number))

    # ---- one trial ----------------------------------------------------------------------------------------
    def trial(self, number: int) -> FrozenTrial:
        trials = self.trials()
        matches = [t for t in trials if t.number == number]
        if not matches:
            last = f"0..{trials[-1].number}" if trials else "none yet"
            raise UserError(f"run '{self.name}' has no trial {number} (trials: {last})")
        return matches[0]

    def complete_trial(self, number: int) -> FrozenTrial:
        """Trial `number`, which must have finished its short training (COMPLETE); else a one-line UserError."""
        trial = self.trial(number)
        category = trial_category(trial)
        if category == "complete":
            return trial
        reason = trial.user_attrs.get("fail_reason")
        why = {
            "infeasible": f"was never trained ({reason or 'over budget'})",
            "pruned": f"was stopped early at step {trial.user_attrs.get('stopped_at_step', '?')} (pruned)",
            "failed": f"failed ({reason or 'no reason recorded'})",
            "interrupted": "was interrupted and never finished",
            "repeat": f"repeats the config of trial {trial.user_attrs.get(REPEAT_OF)} and was not trained again "
            f"(pick trial {trial.user_attrs.get(REPEAT_OF)})",
            "running": "is still running",
        }[category]
        raise UserError(f"trial {number} of run '{self.name}' {why}: pick a COMPLETE trial")

    def trial_dir(self, number: int) -> Path:
        return self.run_dir / "trials" / str(number)

    def retrain_dir(self, number: int) -> Path:
        return self.run_dir / "retrain" / str(number)


def open_run(run_dir: str | Path) -> Run:
    """The run in `run_dir` (a directory written by sslc-search); UserError when there is none."""
    if "://" in str(run_dir):
        raise UserError(f"give the search's run directory, not a storage URL ({run_dir})")
    study = load_study(run_dir)
    return Run(Path(run_dir).resolve(), study)
