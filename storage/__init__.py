"""Where studies and cached blobs live: a SQLite file or a PostgreSQL database, shared by workers.

Knows URLs, bytes and hashes only; nothing about models.
"""

from __future__ import annotations

from storage._engines import atomic, connection_lost, lost_storage
from storage._errors import StorageError
from storage._storage import OpenMode, Storage, open_storage
from storage._url import mask_url, normalize_url

__all__ = [
    "OpenMode",
    "Storage",
    "StorageError",
    "atomic",
    "connection_lost",
    "lost_storage",
    "mask_url",
    "normalize_url",
    "open_storage",
]
