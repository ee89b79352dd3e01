"""Backend-specific engine settings and the translation of driver errors into StorageError."""

from __future__ import annotations

import copy
import logging
import math
import random
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from storage._errors import StorageError
from storage._tables import METADATA
from storage._url import mask_url

__all__ = [
    "atomic",
    "build_engine",
    "build_optuna",
    "connection_lost",
    "create_tables",
    "engine_kwargs",
    "lost_storage",
    "translate_errors",
    "wait_for_server",
]

SQLITE_BUSY_TIMEOUT_S = 60.0  # writers wait this long for the file lock rather than fail "database is locked"
STALE_TRIAL_MAX_RETRY = 3
RECONNECT_PATIENCE_S = 60.0  # an opened PostgreSQL storage waits this long for a restarting server
_WAL_ATTEMPTS = 100
_log = logging.getLogger(__name__)


def engine_kwargs(url: str, connect_timeout: float) -> dict[str, Any]:
    """``create_engine`` keyword arguments for the backend of ``url`` (plain data, so they pickle)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    return {
        # Many workers share one server: a process keeps one connection (Optuna's tables and ours share the
        # engine) and opens a second only while its threads overlap (trial and heartbeat; Optuna nests one
        # call when it opens). A stock server (max_connections 100) then serves ~90 idle-connected workers
        # instead of ~45 (benchmarks/bench_many_workers.py).
        "pool_size": 1,
        "max_overflow": 1,
        "pool_timeout": 60,
        "pool_pre_ping": True,  # a server restarted between calls is reconnected transparently
        "connect_args": {
            "connect_timeout": max(2, math.ceil(connect_timeout)),  # libpq counts whole seconds, at least 2
            "application_name": "frandi",
        },
    }


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Set the busy timeout and switch the file to WAL (persistent; lets readers run beside one writer).

    Switching needs an exclusive lock and fails at once, without waiting, when processes open a new file
    together, hence the retries.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        # In WAL mode NORMAL syncs at checkpoints, not at every commit: a crashed process loses nothing,
        # a power cut can lose the last commits. A trial is a few dozen small commits, so this is its cost.
        cursor.execute("PRAGMA synchronous = NORMAL")
        for attempt in range(_WAL_ATTEMPTS):
            try:
                if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    cursor.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if attempt == _WAL_ATTEMPTS - 1:
                    raise
                time.sleep(0.02 + random.random() * 0.08)
    finally:
        cursor.close()


_atomic = threading.local()


@contextmanager
def atomic() -> Iterator[None]:
    """Make Optuna's read-then-update calls made in this block, by this thread, atomic on SQLite too.

    Optuna checks a trial's state, then updates it (claim WAITING -> RUNNING, fail a stale trial, tell). On
    PostgreSQL the check takes a row lock (SELECT ... FOR UPDATE), so one process wins. SQLite has no row locks
    and pysqlite opens a transaction only at the first write, so two processes could both pass the check: one
    trial run twice, or one stale trial retried twice. In this block each transaction of Optuna's SQLite engine
    starts with BEGIN IMMEDIATE instead, taking the file's write lock before the check. Other calls keep
    SQLite's concurrent readers.
    """
    depth = getattr(_atomic, "depth", 0)
    _atomic.depth = depth + 1
    try:
        yield
    finally:
        _atomic.depth = depth


def _sqlite_begin(connection: Any) -> None:
    if getattr(_atomic, "depth", 0):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def build_engine(url: str, kwargs: dict[str, Any]) -> Engine:
    """A SQLAlchemy engine for our own tables; SQLite connections are switched to WAL on connect."""
    engine = create_engine(url, **copy.deepcopy(kwargs))
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def build_optuna(
    url: str,
    kwargs: dict[str, Any],
    heartbeat_interval: int | None,
    grace_period: int | None,
    attempts: int = 1,
) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on the same database; heartbeat-stale trials are failed and re-enqueued.

    ``attempts`` > 1 retries Optuna's table and version setup, which races when processes first open a DB.
    """
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats and the retry callback are flagged experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_MAX_RETRY)
                storage = optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=copy.deepcopy(kwargs),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=callback if heartbeat_interval else None,
                )
                if storage.engine.dialect.name == "sqlite":  # same pragmas on Optuna's connections as on ours
                    event.listen(storage.engine, "connect", _sqlite_on_connect)
                    event.listen(storage.engine, "begin", _sqlite_begin)
                    storage.engine.dispose()
                return storage
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            _backoff(attempt)
    raise AssertionError("unreachable")


def wait_for_server(engine: Engine, url: str, patience: float) -> None:
    """Let new PostgreSQL connections retry for up to ``patience`` s while the server is down or restarting.

    Only connecting is retried: nothing was sent yet, so nothing can run twice. Attached once a storage has
    opened, so a wrong URL still fails at once.
    """
    if engine.dialect.name != "postgresql" or patience <= 0:
        return

    def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as exc:
                if time.monotonic() >= deadline:
                    raise
                if attempt == 0:
                    reason = short_reason(exc, url)
                    _log.warning("storage unreachable (%s); retrying for up to %.0f s", reason, patience)
                time.sleep(min(0.5 * (attempt + 1), 3.0))
                attempt += 1

    event.listen(engine, "do_connect", connect)


def _backoff(attempt: int) -> None:
    """Sleep a little longer each attempt, with jitter so racing processes fall out of step."""
    time.sleep((0.1 + random.random() * 0.2) * (attempt + 1))


def create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create our tables if missing; retried because concurrent first opens race on CREATE TABLE."""
    with engine.connect():
        pass  # fail fast, without retries, when the server cannot be reached at all
    for attempt in range(attempts):
        try:
            METADATA.create_all(engine)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            _backoff(attempt)


def short_reason(exc: BaseException, url: str) -> str:
    """The driver's message, on one line, with the URL's password scrubbed out just in case."""
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    reason = lines[0] if lines else type(orig).__name__
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    return reason[:300]


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) is a dropped database connection, as when the server restarts."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def lost_storage(exc: BaseException, url: str | None = None) -> str:
    """One line for a storage that went away mid-run (Optuna wraps the driver error); password scrubbed."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, DBAPIError):
        cause = cause.__cause__ or cause.__context__
    reason = short_reason(cause or exc, url or "")
    where = f" {mask_url(url)}" if url else ""
    return (
        f"lost the storage{where}: {reason}; check the database server is up, then run the same command again "
        "(unfinished trials are retried)"
    )


@contextmanager
def translate_errors(url: str, masked_url: str, what: str = "storage error on") -> Iterator[None]:
    """Turn driver and pool errors into StorageError naming the masked URL; IntegrityError passes through."""
    try:
        yield
    except IntegrityError:
        raise
    except (DBAPIError, PoolTimeoutError) as exc:
        raise StorageError(
            f"{what} {masked_url}: {short_reason(exc, url)}; check the server is running and the URL"
        ) from exc
