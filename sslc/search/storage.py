"""The study of a search: create it, or resume it after checking it measures the same thing; leave no trial
RUNNING or WAITING once a search stops."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from sslc.errors import UserError
from sslc.runs.study import StudyRecord
from sslc.runs.trials import mark_interrupted


def open_study(storage, name: str, directions: list[str], sampler, record: StudyRecord) -> optuna.Study:
    """Create the study, or load it for a resumed run after checking it measures what `record` says; then write
    `record`'s definition (this run's settings) on it."""
    study = optuna.create_study(
        storage=storage, study_name=name, directions=directions, sampler=sampler, load_if_exists=True
    )
    if StudyRecord.is_empty(study):
        if study.trials:
            raise UserError(f"run '{name}' holds trials but no record of what they measured: use another --name")
    else:
        StudyRecord.read(study).check_same_search(record, name)
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"run '{name}' has objectives of another kind: use another --name")
    record.write_definition(study)
    return study


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING (a killed or failed search) or WAITING (a retry queued but never asked) become
    interrupted (see `mark_interrupted`). Nothing is queued here: a stopped study must hold no WAITING trial, so
    the searcher queues each retry just before it asks (see `pending_retries`)."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in stale:
        mark_interrupted(study, trial)
    return len(stale)
