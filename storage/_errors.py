"""The one exception type the storage package raises for user-facing problems."""

from __future__ import annotations

__all__ = ["StorageError"]


class StorageError(Exception):
    """A storage problem, stated in one line that names the cause and the fix; never holds a password."""
