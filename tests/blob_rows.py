"""frandi's blob rows read and written behind the storage's back, as disk rot or a dead worker leaves them.

By table and column names (the stored format), not through storage's private modules.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy
from sqlalchemy import DateTime, LargeBinary, String, column, table

from storage import open_storage

BLOBS = table(
    "frandi_blobs",
    column("key", String),
    column("state", String),
    column("owner", String),
    column("data", LargeBinary),
    column("created", DateTime),
    column("updated", DateTime),
)


def set_data(url: str, key: str, data: bytes) -> None:
    """Overwrite a blob's stored (compressed) bytes."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.update(BLOBS).where(BLOBS.c.key == key).values(data=data))
    finally:
        engine.dispose()


def insert_pending(url: str, key: str, owner: str) -> None:
    """A claim on ``key`` by ``owner`` that is still being made (or whose maker died); creates the tables first."""
    open_storage(url).close()
    now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as the storage writes it
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sqlalchemy.insert(BLOBS).values(key=key, state="pending", owner=owner, created=now, updated=now)
            )
    finally:
        engine.dispose()


def states(url: str) -> list[str]:
    """States of the blobs ([] while the database or its table does not exist yet)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sqlalchemy.select(BLOBS.c.state)).scalars())
    except sqlalchemy.exc.OperationalError:
        return []
    finally:
        engine.dispose()
