"""Opening the study database: Optuna's RDB storage plus exitnas's tables, one URL.

SQLite is the default (``sqlite:///runs/<study>/study.db``). Several worker processes share it
safely: the file is switched to write-ahead logging (readers never block the writer), every
connection waits up to a minute for a write lock instead of failing with "database is locked",
and commits sync in WAL's ``synchronous=NORMAL`` mode (a crashed or killed process loses
nothing; a power cut can lose the last commits but never corrupts the file). Any other
SQLAlchemy URL (PostgreSQL for several hosts) is passed through.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy as sa

from exitnas.errors import ExitnasError
from exitnas.storage.store import SqlStore

__all__ = [
    "StorageError",
    "default_storage_url",
    "open_storage",
    "open_store",
    "resolve_storage_url",
]

SQLITE_TIMEOUT_S = 60
MAX_RETRIES = 3  # times a trial whose worker died is queued again


class StorageError(ExitnasError):
    """A storage URL that cannot be opened (bad URL, missing folder or driver, no server)."""


def default_storage_url(run_dir: str | Path) -> str:
    return f"sqlite:///{Path(run_dir) / 'study.db'}"


def resolve_storage_url(storage: str | None, study_storage: str | None, run_dir: Path) -> str:
    """``--storage``, else the study file's ``search.storage``, else the run's SQLite file."""
    return storage or study_storage or default_storage_url(run_dir)


def _engine_kwargs(url: str) -> dict:
    if not url.startswith("sqlite"):
        return {"pool_pre_ping": True}
    # a picklable creator: Ray Tune pickles the Optuna storage with its searcher
    return {"creator": functools.partial(_connect_sqlite, str(sa.engine.make_url(url).database))}


def _connect_sqlite(path: str) -> sqlite3.Connection:
    """WAL is persistent (set in _prepare_sqlite); busy timeout and sync mode are not."""
    conn = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _prepare_sqlite(url: str) -> None:
    database = sa.engine.make_url(url).database
    if not database or database == ":memory:":
        raise StorageError(f"storage {url!r}: an in-memory SQLite database cannot hold a study")
    path = Path(database)
    if not path.parent.is_dir():
        raise StorageError(f"storage {url!r}: folder {path.parent} does not exist")
    # WAL is persistent: set once per database file. Switching needs the database to itself,
    # and SQLite answers "database is locked" at once (no busy wait) while another process
    # switches or reads a database that Optuna alone created; try again until the timeout.
    deadline = time.monotonic() + SQLITE_TIMEOUT_S
    while True:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S)) as conn:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _failure(url: str, err: BaseException) -> StorageError:
    """``cannot open storage`` with the URL (password hidden) and the error's first line."""
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        shown = url
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return StorageError(f"cannot open storage {shown!r}: {first}")


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for ``url``, set up for concurrent workers.

    Args:
        url: SQLAlchemy URL.
        heartbeat: seconds between the heartbeats of a running trial (for a storage that runs
            trials). A trial whose worker stopped beating for twice as long is marked failed
            and queued again (``RetryHeartbeatStaleTrialCallback``, up to 3 retries).

    Raises:
        StorageError: the URL is malformed, its driver is not installed, or it cannot connect.
    """
    try:
        if url.startswith("sqlite"):
            _prepare_sqlite(url)
        for attempt in range(5):
            try:
                with warnings.catch_warnings():  # heartbeats are experimental in Optuna
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=_engine_kwargs(url), **_heartbeat_kwargs(heartbeat)
                    )
            except (sa.exc.IntegrityError, sa.exc.OperationalError) as err:
                # processes opening a fresh database together race to create Optuna's
                # schema (a duplicate row, or "table ... already exists"); the loser finds it
                # created on the next try
                race = isinstance(err, sa.exc.IntegrityError) or "already exists" in str(err)
                if attempt == 4 or not race:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except StorageError:
        raise
    except (sa.exc.SQLAlchemyError, sqlite3.Error, ImportError, ValueError, RuntimeError) as err:
        raise _failure(url, err) from None


def _heartbeat_kwargs(heartbeat: int | None) -> dict:
    if heartbeat is None:
        return {}
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    return {
        "heartbeat_interval": heartbeat,
        "grace_period": 2 * heartbeat,
        "heartbeat_stale_trial_callback": retry,
    }


def open_store(url: str) -> SqlStore:
    """exitnas's evaluation cache in the same database as the study."""
    try:
        if url.startswith("sqlite"):
            _prepare_sqlite(url)
        return SqlStore(url, engine_kwargs=_engine_kwargs(url))
    except (sa.exc.SQLAlchemyError, sqlite3.Error, ImportError, ValueError) as err:
        raise _failure(url, err) from None
