"""The Optuna study is the one truth of a search: open it, check a resumed run matches, repair interrupted trials."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from sslc.errors import UserError

# Settings that define what a study measures: a resumed run must not silently change them.
IDENTITY_KEYS = (
    "teacher", "space", "objectives", "budget_macs", "budget_seconds", "data", "protocol", "trainer",
)
INTERRUPTED = "interrupted: the search stopped while this trial ran (it is run again on resume)"
STUDY_DB = "study.db"
STUDY_MARKER = "study.txt"  # "<storage url>\n<study name>\n": how later commands find a run's study
OBJECTIVES = ("loss", "macs", "latency")
# Each objective's value, as recorded on a trial and in the Pareto files: the name says the unit.
OBJECTIVE_ATTRS = {"loss": "heldout_loss", "macs": "gmacs", "latency": "latency_ms"}
RETRY_PARAMS = "retry_params"  # user attr of an interrupted trial: the params to run again on resume
REPEAT_OF = "repeat_of"  # user attr of a trial answered from an earlier one with the same config (never trained)
# User attrs that say where a trial came from, not what it measured: never copied onto a repeat.
LINEAGE_ATTRS = ("retry_of", REPEAT_OF, RETRY_PARAMS, "interrupted")


def default_storage_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / STUDY_DB).resolve()}"


def _fast_sqlite(dbapi_connection, _record) -> None:
    """Write-ahead log with synchronous=NORMAL: a commit costs microseconds instead of an fsync (10-20 ms on a
    busy disk), and every suggested param and user attr is a commit, in the driver's loop. Still safe against
    a killed search (SIGKILL, Ctrl-C): only a power cut or OS crash may drop the last commits, never corrupt the
    file. Readers (the dashboard) no longer block the search either. Where WAL is unavailable, keep defaults."""
    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode and str(mode[0]).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    except Exception:  # a read-only file or a filesystem without shared memory: the defaults still work
        pass
    finally:
        cursor.close()


# The PostgreSQL driver is an extra: SQLAlchemy 2.1 maps a plain postgresql:// URL to psycopg 3 (2.0 to psycopg2).
POSTGRES_EXTRA = "pip install 'sslc[postgres]'"


def _is_sqlite(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0].lower() == "sqlite"


def _driver_missing(url: str, error: ImportError) -> UserError:
    scheme = url.split(":", 1)[0]
    cause = error.__cause__ or error
    if scheme.lower() in ("postgresql", "postgresql+psycopg"):
        hint = POSTGRES_EXTRA
    else:
        hint = f"install the Python driver SQLAlchemy needs for {scheme}://"
        if scheme.lower().startswith("postgresql+"):
            hint += f", or use postgresql:// with {POSTGRES_EXTRA}"
    return UserError(f"no database driver for {scheme}:// storage ({_first_line(cause)}): {hint}")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def shown_url(url: str) -> str:
    """The URL for messages, its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: SQLAlchemy will say so when it is opened
        return url


def check_driver(url: str) -> None:
    """Fail at once, before a teacher is loaded, when the database driver `url` needs is not installed."""
    from sqlalchemy.engine import make_url

    try:
        make_url(url).get_dialect().import_dbapi()
    except ImportError as error:
        raise _driver_missing(url, error) from None
    except Exception as error:  # a malformed URL or an unknown dialect
        raise UserError(f"cannot open study storage {shown_url(url)}: {_first_line(error)}") from None


def _schema_race(error: Exception) -> bool:
    """Optuna creates the schema unguarded: when another process (optuna-dashboard, sslc-report, a second
    search) opens a brand-new database at the same moment, one of them loses the race with "table ... already
    exists" or a duplicate alembic_version row; once the winner has committed, opening again succeeds."""
    text = str(error).lower()
    return "already exists" in text or "duplicate" in text or "unique" in text


def make_storage(url: str, attempts: int = 6) -> optuna.storages.RDBStorage:
    sqlite = _is_sqlite(url)
    # A generous SQLite timeout: the dashboard may read while the search writes.
    kwargs = {"connect_args": {"timeout": 30}} if sqlite else {}
    for attempt in range(1, attempts + 1):
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
            break
        except ImportError as error:  # Optuna's "Failed to import DB access module": say which extra
            raise _driver_missing(url, error) from None
        except Exception as error:  # SQLAlchemy raises many types; all mean the same to a user
            # SQLite (a file, no server) retries any database error: its locking errors look alike. A server
            # that is unreachable or refuses the login fails at once; only a lost schema race is retried there.
            retry = isinstance(error, DBAPIError) and (sqlite or _schema_race(error))
            if not retry or attempt == attempts:
                raise UserError(f"cannot open study storage {shown_url(url)}: {_first_line(error)}") from None
            time.sleep(0.2 * attempt)
    if storage.engine.name == "sqlite" and ":memory:" not in url and url.rstrip("/") != "sqlite:":
        event.listen(storage.engine, "connect", _fast_sqlite)
        storage.engine.dispose()  # connections opened while creating the tables reconnect with the settings
    return storage


def open_study(storage, name: str, directions: list[str], sampler, identity: dict) -> optuna.Study:
    """Create the study, or load it for a resumed run after checking it measures the same thing."""
    study = optuna.create_study(
        storage=storage, study_name=name, directions=directions, sampler=sampler, load_if_exists=True
    )
    stored = study.user_attrs.get("identity")
    if stored is None:
        if study.trials:
            raise UserError(f"run '{name}' holds trials but no record of what they measured: use another --name")
        study.set_user_attr("identity", identity)
    elif "protocol" not in stored:
        # Scores from before the evaluation protocol summed a depth-dependent number of terms: never mix them.
        raise UserError(
            f"run '{name}' was made by an older sslc whose scores are not comparable with today's (no evaluation "
            "protocol recorded): use another --name"
        )
    else:
        changed = [k for k in IDENTITY_KEYS if json.dumps(stored.get(k)) != json.dumps(identity.get(k))]
        if changed:
            key = changed[0]
            before, now = stored.get(key), identity.get(key)
            if key == "protocol" and before.get("targets") != now.get("targets"):
                before, now = f"targets {before['targets']}", f"targets {now['targets']}"
            values = f" ({before!r}, not {now!r})" if len(repr(before)) + len(repr(now)) < 160 else ""
            raise UserError(
                f"run '{name}' was started with another {key}{values}: use another --name for a different search"
            )
    if [d.name.lower() for d in study.directions] != directions:
        raise UserError(f"run '{name}' has objectives of another kind: use another --name")
    return study


def recover_interrupted(study: optuna.Study) -> int:
    """Trials left RUNNING (a killed or failed search) or WAITING (a retry queued but never asked) become FAIL,
    marked interrupted with the config to run again (`RETRY_PARAMS`). Nothing is queued here: a stopped study
    must hold no WAITING trial, so the searcher queues each retry just before it asks (see `pending_retries`)."""
    storage, recovered = study._storage, 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        params = trial.params or trial.system_attrs.get("fixed_params") or {}
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", INTERRUPTED)
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        if params and not trial.user_attrs.get("infeasible"):
            storage.set_trial_user_attr(trial._trial_id, RETRY_PARAMS, params)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        recovered += 1
    return recovered


def pending_retries(study: optuna.Study) -> list[tuple[int, dict]]:
    """(trial number, params) of each interrupted trial whose config has not been queued again yet, in order.
    A retry carries `retry_of: <number>`; a retry that is itself interrupted gets its own retry."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return [
        (t.number, t.user_attrs[RETRY_PARAMS])
        for t in trials
        if trial_category(t) == "interrupted" and t.user_attrs.get(RETRY_PARAMS) and t.number not in retried
    ]


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Trained trials count against --trials; over-budget configs, repeats and interrupted runs do not."""
    return trial_category(trial) in ("complete", "pruned", "failed")


def count_trained(study: optuna.Study) -> int:
    """How many trials count against --trials so far."""
    return sum(counts_toward_budget(t) for t in study.get_trials(deepcopy=False))


def trial_category(trial: optuna.trial.FrozenTrial) -> str:
    """complete | pruned | infeasible (over budget, never trained) | failed | interrupted | repeat (a config
    already tried, answered from that earlier trial, never trained) | running (or queued)."""
    if trial.user_attrs.get("infeasible"):
        return "infeasible"  # an over-budget repeat too: it was never trained either way
    if trial.user_attrs.get(REPEAT_OF) is not None:
        return "repeat"
    if trial.state == TrialState.COMPLETE:
        return "complete"
    if trial.state == TrialState.PRUNED:
        return "pruned"
    if trial.state == TrialState.FAIL:
        return "interrupted" if trial.user_attrs.get("interrupted") else "failed"
    return "running"  # RUNNING or WAITING


def config_key(config: dict) -> str:
    """The identity of a config for spotting repeats: its dict, order-independent."""
    return json.dumps(config, sort_keys=True)


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated COMPLETE trials, repeats left out (a repeat has its original's values, so Optuna's own
    `study.best_trials` would list the same point twice). In trial order."""
    signs = [1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    points = [
        (t, [s * v for s, v in zip(signs, t.values)])
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if trial_category(t) == "complete" and t.values
    ]

    def dominates(a, b) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    return [t for t, p in points if not any(dominates(q, p) for _, q in points)]


def objective_names(study: optuna.Study) -> list[str]:
    """The study's objectives in the order of its values (recorded by the search)."""
    names = study.user_attrs.get("objective_names")
    return list(names) if names else list(OBJECTIVES[: len(study.directions)])
