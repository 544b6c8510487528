"""Study storage: several processes opening one brand-new SQLite database at once must all get the study."""

from __future__ import annotations

import multiprocessing

import optuna
import pytest

from sslc.errors import UserError
from sslc.runs.storage import make_storage

OPENERS = 3


def _open_and_count(url: str, barrier) -> int:
    barrier.wait()  # all processes create the schema at the same moment, as a dashboard racing a search would
    storage = make_storage(url)
    study = optuna.create_study(storage=storage, study_name="shared", load_if_exists=True)
    return len(optuna.get_all_study_summaries(storage)) + len(study.get_trials())


def test_processes_opening_a_new_database_together_all_succeed(tmp_path):
    # Bare optuna.storages.RDBStorage loses this race most of the time ("table ... already exists", duplicate
    # alembic_version row); before the fix a search started beside a dashboard exited with code 2.
    context = multiprocessing.get_context("fork")
    for round_number in range(4):
        url = f"sqlite:///{tmp_path / f'round{round_number}.db'}"
        with context.Manager() as manager, context.Pool(OPENERS) as pool:
            results = pool.starmap(_open_and_count, [(url, manager.Barrier(OPENERS))] * OPENERS)
        assert results == [1] * OPENERS  # one study, no trials, in every process
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["shared"]


def test_unusable_storage_is_one_user_error(tmp_path):
    (tmp_path / "dir.db").mkdir()  # a directory where the database file should be
    with pytest.raises(UserError, match="cannot open study storage"):
        make_storage(f"sqlite:///{tmp_path / 'dir.db'}", attempts=2)
