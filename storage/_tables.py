"""frandi's own tables, kept in a MetaData separate from Optuna's (whose tables we never write)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, Column, Connection, DateTime, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

__all__ = ["METADATA", "blobs", "counters", "upsert", "utcnow"]

METADATA = MetaData()

# Content-addressed cache of large payloads (synthetic batches, checkpoints); see storage._blobs.
blobs = Table(
    "frandi_blobs",
    METADATA,
    Column("key", String(255), primary_key=True),
    Column("state", String(16), nullable=False),  # 'pending' (claimed, being made) or 'ready'
    Column("owner", String(255), nullable=False),  # the claim's unique id: host:pid:random
    Column("sha256", String(64), nullable=True),  # hex digest of the raw, uncompressed payload
    Column("size", BigInteger, nullable=True),  # length of the raw payload in bytes
    Column("data", LargeBinary, nullable=True),  # zlib-compressed payload
    Column("meta", Text, nullable=True),  # JSON object
    Column("created", DateTime, nullable=False),  # naive UTC
    Column("updated", DateTime, nullable=False),  # naive UTC; a pending claim's owner touches it as heartbeat
)

# Named integer counters that processes decrement atomically (e.g. trials a study may still start); see _counters.
counters = Table(
    "frandi_counters",
    METADATA,
    Column("key", String(255), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


def utcnow() -> datetime:
    """Naive UTC now: stored the same way by SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


def upsert(connection: Connection, table: Table) -> PgInsert | SqliteInsert:
    """An INSERT on ``table`` that can take ``on_conflict_do_update`` in this connection's dialect."""
    return pg_insert(table) if connection.dialect.name == "postgresql" else sqlite_insert(table)
