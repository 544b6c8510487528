"""Where a run's study lives: open Optuna RDB storage (SQLite by default, PostgreSQL with `sslc[postgres]`) and
find the study of a run directory.

`study.txt` in a run directory names the storage URL and the study ("<url>\\n<name>\\n"); `study.db` is the default
SQLite file. Both the search (writing) and every later command (reading) open storage through here.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError

from sslc.errors import UserError, first_line

STUDY_DB = "study.db"
STUDY_MARKER = "study.txt"  # "<storage url>\n<study name>\n": how later commands find a run's study
# The PostgreSQL driver is an extra: SQLAlchemy 2.1 maps a plain postgresql:// URL to psycopg 3 (2.0 to psycopg2).
POSTGRES_EXTRA = "pip install 'sslc[postgres]'"


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
    return UserError(f"no database driver for {scheme}:// storage ({first_line(cause)}): {hint}")


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
        raise UserError(f"cannot open study storage {shown_url(url)}: {first_line(error)}") from None


def _schema_race(error: Exception) -> bool:
    """Optuna creates the schema unguarded: when another process (optuna-dashboard, sslc-report, a second
    search) opens a brand-new database at the same moment, one of them loses the race with "table ... already
    exists" or a duplicate alembic_version row; once the winner has committed, opening again succeeds."""
    text = str(error).lower()
    return "already exists" in text or "duplicate" in text or "unique" in text


def make_storage(url: str, attempts: int = 6, kind: type = optuna.storages.RDBStorage) -> optuna.storages.RDBStorage:
    """`kind`: RDBStorage or a subclass (the dashboard's `DashboardStorage`)."""
    sqlite = _is_sqlite(url)
    # A generous SQLite timeout: the dashboard may read while the search writes.
    kwargs = {"connect_args": {"timeout": 30}} if sqlite else {}
    for attempt in range(1, attempts + 1):
        try:
            storage = kind(url, engine_kwargs=kwargs)
            break
        except ImportError as error:  # Optuna's "Failed to import DB access module": say which extra
            raise _driver_missing(url, error) from None
        except Exception as error:  # SQLAlchemy raises many types; all mean the same to a user
            # SQLite (a file, no server) retries any database error: its locking errors look alike. A server
            # that is unreachable or refuses the login fails at once; only a lost schema race is retried there.
            retry = isinstance(error, DBAPIError) and (sqlite or _schema_race(error))
            if not retry or attempt == attempts:
                raise UserError(f"cannot open study storage {shown_url(url)}: {first_line(error)}") from None
            time.sleep(0.2 * attempt)
    if storage.engine.name == "sqlite" and ":memory:" not in url and url.rstrip("/") != "sqlite:":
        event.listen(storage.engine, "connect", _fast_sqlite)
        storage.engine.dispose()  # connections opened while creating the tables reconnect with the settings
    return storage


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


def mark_study(run_dir: Path, storage_url: str, study_name: str) -> None:
    """Write `study.txt`, so later commands given the run directory find the study."""
    (Path(run_dir) / STUDY_MARKER).write_text(f"{storage_url}\n{study_name}\n")


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
