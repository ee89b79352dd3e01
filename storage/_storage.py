"""Storage: one database shared by Optuna's tables and ours, safe to pickle into worker processes."""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import optuna
from sqlalchemy import Connection, create_engine, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from storage import _blobs, _counters
from storage._engines import (
    RECONNECT_PATIENCE_S,
    build_engine,
    build_optuna,
    create_tables,
    engine_kwargs,
    translate_errors,
    wait_for_server,
)
from storage._errors import StorageError
from storage._tables import METADATA
from storage._url import mask_url, normalize_url

__all__ = ["OpenMode", "Storage", "open_storage"]

_UNREACHABLE = "cannot reach storage"
_OPEN_ATTEMPTS = 5  # processes opening a fresh database together race on CREATE TABLE; retry that
_SQLITE_HEADER = b"SQLite format 3\x00"
_STUDY_TABLES = ("studies", *METADATA.tables)  # Optuna's, then ours: a database frandi search has opened
_CHECK_URL = "check --storage and [study] storage"

OpenMode = Literal["create", "write", "read"]


class Storage:
    """Optuna's RDB storage plus frandi's blob cache and counters on one database URL.

    One engine (Optuna's, built lazily) serves both, dropped when pickled or forked, so a Storage can be handed
    to workers. ``close()`` disposes it; a closed Storage reconnects if used again. Once opened, PostgreSQL connections
    wait up to ``reconnect_patience`` s for a server that restarts.
    """

    def __init__(
        self,
        url: str,
        *,
        heartbeat_interval: int | None = 10,
        grace_period: int | None = None,
        connect_timeout: float = 10,
        reconnect_patience: float = RECONNECT_PATIENCE_S,
    ) -> None:
        self.url = url
        self.masked_url = mask_url(url)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.reconnect_patience = reconnect_patience
        self._opened = False  # reconnects wait for the server only after a first successful open
        self._engine_kwargs = engine_kwargs(url, connect_timeout)
        self._forget_engines()

    def _forget_engines(self) -> None:
        self._optuna_obj: optuna.storages.RDBStorage | None = None
        self._tables_engine: Engine | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _check_process(self) -> None:
        """After a fork, drop the parent's pooled connections without closing them under its feet."""
        if self._pid != os.getpid():
            if self._optuna_obj is not None:
                self._optuna_obj.engine.dispose(close=False)
            self._forget_engines()

    @property
    def optuna(self) -> optuna.storages.RDBStorage:
        """Optuna's storage on this database, with heartbeats and re-enqueueing of stale trials."""
        self._check_process()
        with self._lock:
            if self._optuna_obj is None:
                with translate_errors(self.url, self.masked_url, _UNREACHABLE):
                    self._optuna_obj = build_optuna(
                        self.url, self._engine_kwargs, self.heartbeat_interval, self.grace_period
                    )
                if self._opened:
                    wait_for_server(self._optuna_obj.engine, self.url, self.reconnect_patience)
            return self._optuna_obj

    @property
    def _engine(self) -> Engine:
        """Optuna's engine: our tables share its pool, so a process holds one pool of connections, not two."""
        return self.optuna.engine

    @contextmanager
    def _session(self) -> Iterator[Connection]:
        """One transaction: commit, or roll back on error; always close; driver errors become StorageError."""
        with translate_errors(self.url, self.masked_url), self._engine.begin() as connection:
            yield connection

    def _open(self, mode: OpenMode) -> None:
        """Connect; in "create" mode make the SQLite folder and every table, otherwise require a study database.

        Raises StorageError naming what is wrong: unreachable server, SQLite path that is a folder, not a
        database, read-only (unless "read"), or (unless "create") missing or holding no study.
        """
        database = make_url(self.url).database
        if self.url.startswith("sqlite") and database:
            _check_sqlite_file(Path(database).expanduser(), mode)
        with translate_errors(self.url, self.masked_url, _UNREACHABLE):
            if mode == "create":
                # Our tables on an engine of their own (Optuna's is built below, with retries); it holds no
                # connection once done, but lives as long as this Storage: an engine collected by the garbage
                # collector mid-run runs SQLAlchemy callbacks that a SIGTERM (raised as Terminated) can hit.
                self._tables_engine = build_engine(self.url, self._engine_kwargs)
                create_tables(self._tables_engine)  # also checks the server is reachable, before any retrying
                self._tables_engine.dispose()
            else:
                self._check_tables()
            rdb = build_optuna(
                self.url, self._engine_kwargs, self.heartbeat_interval, self.grace_period, _OPEN_ATTEMPTS
            )
        with self._lock:
            self._optuna_obj = rdb
            self._opened = True
            wait_for_server(rdb.engine, self.url, self.reconnect_patience)

    def _check_tables(self) -> None:
        """Refuse a database without a study's tables, read on a bare engine: nothing is switched or created."""
        engine = create_engine(self.url, **copy.deepcopy(self._engine_kwargs))
        try:
            names = set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
        missing = [t for t in _STUDY_TABLES if t not in names]
        if missing:
            raise StorageError(
                f"storage {self.masked_url} holds no frandi study (no table '{missing[0]}'); {_CHECK_URL}, "
                "or start the study with frandi search"
            )

    def get_blob(self, key: str) -> bytes | None:
        """The verified payload under ``key``; None if missing, pending or corrupted (then deleted)."""
        return _blobs.get_blob(self._session, key)

    def put_blob(self, key: str, data: bytes, meta: dict[str, Any] | None = None) -> None:
        """Store ``data`` (with JSON-able ``meta``) under ``key``, replacing what was there."""
        _blobs.put_blob(self._session, key, data, meta)

    def get_or_create_blob(
        self,
        key: str,
        make: Callable[[], bytes],
        *,
        meta: dict[str, Any] | None = None,
        what: str | None = None,
        poll: float = 0.5,
        timeout: float = 3600,
        stale_after: float | None = None,
    ) -> bytes:
        """The blob under ``key``; if missing, exactly one caller (any process or machine) runs ``make()``.

        The maker's claim beats like a trial; a claim silent for ``stale_after`` s (default: the trials' grace
        period) is taken over, so a maker killed mid-way holds nobody up for long. Waiters say once what they
        wait for (``what``, default the key) and who makes it.
        """
        if stale_after is None:
            stale_after = float(self.grace_period or 2 * (self.heartbeat_interval or 300))
        return _blobs.get_or_create_blob(
            self._session, key, make, meta=meta, what=what, poll=poll, timeout=timeout, stale_after=stale_after
        )

    def blob_info(self, key: str) -> dict[str, Any] | None:
        """state, sha256, size, meta, owner, created, updated of ``key``; None if missing."""
        return _blobs.blob_info(self._session, key)

    def get_counter(self, key: str) -> int:
        """The counter under ``key``; 0 when never set."""
        return _counters.get_counter(self._session, key)

    def set_counter(self, key: str, value: int) -> None:
        """Set the counter under ``key`` to ``value``."""
        _counters.set_counter(self._session, key, value)

    def add_to_counter(self, key: str, delta: int) -> None:
        """Add ``delta`` to the counter under ``key`` atomically."""
        _counters.add_to_counter(self._session, key, delta)

    def take_from_counter(self, key: str) -> bool:
        """Decrement the counter under ``key`` if positive; True if this caller got one (atomic across processes)."""
        return _counters.take_from_counter(self._session, key)

    def close(self) -> None:
        """Dispose the engine and its pooled connections."""
        with self._lock:
            if self._optuna_obj is not None:
                with contextlib.suppress(DBAPIError):
                    self._optuna_obj.remove_session()
                self._optuna_obj.engine.dispose()
            self._optuna_obj = self._tables_engine = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_optuna_obj", "_tables_engine", "_lock", "_pid"):
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forget_engines()

    def __repr__(self) -> str:
        return f"Storage({self.masked_url!r})"


def _check_sqlite_file(path: Path, mode: OpenMode) -> None:
    """Refuse a SQLite path that is a folder, another kind of file, read-only (unless ``mode`` is "read") or
    missing (unless "create"); in "create" mode, make its folder. One line each, before SQLite touches the path."""
    if path.is_dir():
        raise StorageError(f"storage '{path}' is a folder, not a database file; name a file such as '{path}/frandi.db'")
    if path.exists():
        try:
            with path.open("rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as e:
            raise StorageError(f"cannot read storage '{path}' ({e.strerror}); {_CHECK_URL}") from None
        if header and header != _SQLITE_HEADER:
            raise StorageError(f"storage '{path}' is not a SQLite database; {_CHECK_URL}")
        if not header and mode != "create":
            raise StorageError(f"storage '{path}' is an empty file, not a study database; {_CHECK_URL}")
        if mode != "read" and not os.access(path, os.W_OK):
            raise StorageError(f"storage '{path}' is read-only; make it writable or copy it to a writable place")
        return
    if mode != "create":
        raise StorageError(f"storage '{path}' does not exist; {_CHECK_URL}, or start the study with frandi search")
    _make_folder(path.parent)


def _make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents) for a new database, saying which part is in the way if it cannot."""
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise StorageError(f"cannot create folder '{folder}' for the storage: '{blocker}' is a file; {_CHECK_URL}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create folder '{folder}' for the storage ({e.strerror}); {_CHECK_URL}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(f"folder '{folder}' of the storage is not writable; {_CHECK_URL}")


def open_storage(
    url: str,
    *,
    mode: OpenMode = "create",
    heartbeat_interval: int | None = 10,
    grace_period: int | None = None,
    connect_timeout: float = 10,
    reconnect_patience: float = RECONNECT_PATIENCE_S,
) -> Storage:
    """Open the storage at ``url``; see ``normalize_url`` for accepted forms.

    ``mode``: "create" makes a missing SQLite file (and its folder) and the tables (``frandi search``);
    "write" and "read" need a database that already holds a study's tables and create nothing, "write"
    refusing a read-only SQLite file up front (joining workers), "read" accepting one (``frandi status``).
    Optuna trials send a heartbeat every ``heartbeat_interval`` s; one silent for ``grace_period`` s
    (default 2 x interval) is failed and re-enqueued, up to 3 times. An unreachable server fails the open at
    once; once open, a PostgreSQL server that goes away is waited for up to ``reconnect_patience`` s.
    """
    storage = Storage(
        normalize_url(url),
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        connect_timeout=connect_timeout,
        reconnect_patience=reconnect_patience,
    )
    try:
        storage._open(mode)
    except BaseException:
        storage.close()
        raise
    return storage
