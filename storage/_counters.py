"""Named counters in the ``frandi_counters`` table: set, add, read, and take one atomically across processes."""

from __future__ import annotations

from sqlalchemy import select, update

from storage._blobs import SessionFactory
from storage._tables import counters, upsert

__all__ = ["add_to_counter", "get_counter", "set_counter", "take_from_counter"]


def get_counter(session: SessionFactory, key: str) -> int:
    """The value under ``key``; 0 when it was never set."""
    with session() as s:
        value = s.execute(select(counters.c.value).where(counters.c.key == key)).scalar_one_or_none()
    return int(value or 0)


def set_counter(session: SessionFactory, key: str, value: int) -> None:
    """Store ``value`` under ``key``, creating or replacing it."""
    with session() as s:
        stmt = upsert(s, counters).values(key=key, value=value)
        s.execute(stmt.on_conflict_do_update(index_elements=[counters.c.key], set_={"value": value}))


def add_to_counter(session: SessionFactory, key: str, delta: int) -> None:
    """Add ``delta`` to the value under ``key`` (from 0 if never set), in one statement."""
    with session() as s:
        stmt = upsert(s, counters).values(key=key, value=delta)
        s.execute(
            stmt.on_conflict_do_update(index_elements=[counters.c.key], set_={"value": counters.c.value + delta})
        )


def take_from_counter(session: SessionFactory, key: str) -> bool:
    """Decrement the value under ``key`` if it is positive; True if this caller got one.

    One conditional UPDATE, so concurrent callers on any number of processes or machines never take more
    than the value held.
    """
    with session() as s:
        result = s.execute(
            update(counters).where(counters.c.key == key, counters.c.value > 0).values(value=counters.c.value - 1)
        )
    return result.rowcount == 1
