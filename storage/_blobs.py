"""A blob cache in the ``frandi_blobs`` table: verified reads, upserts, and make-once-across-processes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from storage._errors import StorageError
from storage._tables import blobs, upsert, utcnow

__all__ = ["SessionFactory", "blob_info", "get_blob", "get_or_create_blob", "put_blob"]

SessionFactory = Callable[[], AbstractContextManager[Connection]]
if TYPE_CHECKING:
    from sqlalchemy import Row

    BlobRow = Row[*tuple[Any, ...]]  # a row of selected frandi_blobs columns

PENDING, READY = "pending", "ready"
_ZLIB_LEVEL = 1  # float tensors barely compress; favour speed
_log = logging.getLogger(__name__)


def _encode(data: bytes, meta: dict[str, Any] | None) -> dict[str, Any]:
    """Column values for a ready blob holding ``data``."""
    return {
        "state": READY,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "data": zlib.compress(data, _ZLIB_LEVEL),
        "meta": json.dumps(meta or {}, sort_keys=True),
        "updated": utcnow(),
    }


def _decode(row: BlobRow) -> bytes | None:
    """The payload of a ready row, or None when it cannot be decompressed or its hash does not match."""
    if row.data is None or row.sha256 is None:
        return None
    try:
        data = zlib.decompress(row.data)
    except zlib.error:
        return None
    return data if hashlib.sha256(data).hexdigest() == row.sha256 else None


def _read(session: SessionFactory, key: str) -> BlobRow | None:
    cols = (blobs.c.state, blobs.c.owner, blobs.c.sha256, blobs.c.data, blobs.c.updated)
    with session() as s:
        return s.execute(select(*cols).where(blobs.c.key == key)).one_or_none()


def _verified(session: SessionFactory, key: str, row: BlobRow) -> bytes | None:
    """Decode a ready row; a corrupted one is deleted (unless rewritten meanwhile) and None returned."""
    data = _decode(row)
    if data is None:
        _log.warning("blob %r is corrupted (undecompressable or sha256 mismatch); deleting it", key)
        with session() as s:
            s.execute(delete(blobs).where(blobs.c.key == key, blobs.c.updated == row.updated))
    return data


def get_blob(session: SessionFactory, key: str) -> bytes | None:
    """The verified payload stored under ``key``, or None if missing, pending or corrupted."""
    row = _read(session, key)
    if row is None or row.state != READY:
        return None
    return _verified(session, key, row)


def put_blob(session: SessionFactory, key: str, data: bytes, meta: dict[str, Any] | None = None) -> None:
    """Store ``data`` under ``key`` as ready, replacing any existing row (pending or not)."""
    values = {"key": key, "owner": _new_owner(), "created": utcnow(), **_encode(bytes(data), meta)}
    with session() as s:
        stmt = upsert(s, blobs).values(**values)
        changed = {k: stmt.excluded[k] for k in values if k not in ("key", "created")}
        s.execute(stmt.on_conflict_do_update(index_elements=[blobs.c.key], set_=changed))


def blob_info(session: SessionFactory, key: str) -> dict[str, Any] | None:
    """State, hash, raw size, meta, owner and timestamps (aware UTC) of ``key``; the payload is not read."""
    cols = [blobs.c[name] for name in ("state", "sha256", "size", "meta", "owner", "created", "updated")]
    with session() as s:
        row = s.execute(select(*cols).where(blobs.c.key == key)).one_or_none()
    if row is None:
        return None
    info = dict(row._mapping)
    info["meta"] = json.loads(row.meta) if row.meta else {}
    info["created"] = row.created.replace(tzinfo=UTC)
    info["updated"] = row.updated.replace(tzinfo=UTC)
    return info


def _new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _claim(session: SessionFactory, key: str, owner: str) -> bool:
    """Insert a pending row; the primary key lets exactly one concurrent claimer win."""
    now = utcnow()
    try:
        with session() as s:
            s.execute(insert(blobs).values(key=key, state=PENDING, owner=owner, created=now, updated=now))
    except IntegrityError:
        return False
    return True


def _take_over(session: SessionFactory, key: str, row: BlobRow, owner: str) -> bool:
    """Steal a stale claim, only if nobody touched it since we looked (compare-and-swap on owner+updated)."""
    with session() as s:
        result = s.execute(
            update(blobs)
            .where(blobs.c.key == key, blobs.c.state == PENDING)
            .where(blobs.c.owner == row.owner, blobs.c.updated == row.updated)
            .values(owner=owner, updated=utcnow())
        )
    return result.rowcount == 1


def _release(session: SessionFactory, key: str, owner: str) -> None:
    """Drop our pending claim after make() failed, so another caller can try."""
    try:
        with session() as s:
            mine = (blobs.c.key == key, blobs.c.owner == owner, blobs.c.state == PENDING)
            s.execute(delete(blobs).where(*mine))
    except Exception as exc:  # the claim will go stale and be taken over; keep the caller's own error
        _log.warning("could not release claim on blob %r: %s", key, exc)


class _Heartbeat:
    """Touch our pending row every ``interval`` seconds while make() runs, so waiters do not take it over."""

    def __init__(self, session: SessionFactory, key: str, owner: str, interval: float) -> None:
        self._session, self._key, self._owner, self._interval = session, key, owner, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"frandi-blob-heartbeat-{key}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                with self._session() as s:
                    s.execute(
                        update(blobs)
                        .where(blobs.c.key == self._key, blobs.c.owner == self._owner)
                        .where(blobs.c.state == PENDING)
                        .values(updated=utcnow())
                    )
            except Exception as exc:
                _log.warning("heartbeat for blob %r failed: %s", self._key, exc)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def _produce(
    session: SessionFactory,
    key: str,
    make: Callable[[], bytes],
    meta: dict[str, Any] | None,
    owner: str,
    heartbeat: float,
) -> bytes:
    """Run make() under our claim and store its result; the claim is released if make() fails."""
    with _Heartbeat(session, key, owner, heartbeat):
        try:
            data = make()
            if not isinstance(data, bytes | bytearray | memoryview):
                raise TypeError(f"make() for blob {key!r} returned {type(data).__name__}, expected bytes")
            data = bytes(data)
        except BaseException:
            _release(session, key, owner)
            raise
    with session() as s:
        result = s.execute(
            update(blobs)
            .where(blobs.c.key == key, blobs.c.owner == owner, blobs.c.state == PENDING)
            .values(**_encode(data, meta))
        )
    if result.rowcount == 1:
        return data
    stored = get_blob(session, key)  # our claim was taken over; whoever stored first wins, for everyone
    if stored is not None:
        return stored
    put_blob(session, key, data, meta)
    return data


def get_or_create_blob(
    session: SessionFactory,
    key: str,
    make: Callable[[], bytes],
    *,
    meta: dict[str, Any] | None,
    what: str | None,
    poll: float,
    timeout: float,
    stale_after: float,
) -> bytes:
    """Return the blob under ``key``; if missing, exactly one caller across processes runs make() for it.

    Every setting is the caller's: the defaults are declared once, by ``Storage.get_or_create_blob``.

    The maker touches its claim every ``stale_after / 4`` s. Waiters poll until the blob is ready, saying once
    what they wait for; a claim whose row went ``stale_after`` seconds (by the waiter's own clock, so clock skew
    between machines is harmless) without a heartbeat is taken over.
    """
    deadline = time.monotonic() + timeout
    told = False
    seen: tuple[str, Any] | None = None
    seen_at = time.monotonic()
    while True:
        row = _read(session, key)
        if row is None:
            owner = _new_owner()
            if _claim(session, key, owner):
                return _produce(session, key, make, meta, owner, stale_after / 4)
            continue
        if row.state == READY:
            data = _verified(session, key, row)
            if data is not None:
                return data
            continue  # corrupted and deleted: claim it on the next pass
        now = time.monotonic()
        if not told:
            _log.warning(
                "waiting for %s, being made by %s (taken over if it stops for %.0f s)",
                what or f"blob {key!r}", row.owner, stale_after,
            )
            told = True
        if (row.owner, row.updated) != seen:
            seen, seen_at = (row.owner, row.updated), now
        elif now - seen_at >= stale_after:
            owner = _new_owner()
            _log.warning(
                "%s: %s went silent for %.0f s; taking over", what or f"blob {key!r}", row.owner, stale_after
            )
            if _take_over(session, key, row, owner):
                return _produce(session, key, make, meta, owner, stale_after / 4)
            continue
        if now >= deadline:
            raise StorageError(
                f"timed out after {timeout:.0f} s waiting for blob '{key}' being made by {row.owner}; "
                "check that worker is alive, or raise the timeout"
            )
        time.sleep(poll)
