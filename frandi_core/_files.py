"""Writing a file whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path

from ._errors import FrandiError


def write_atomic(path: str | Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over ``path``.

    Readers see the old file or the new one, never half of one; a failed write (full disk, read-only or
    immutable target) leaves whatever was at ``path`` as it was, and no temporary file behind.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FrandiError(f"'{path}' already exists (written meanwhile?); choose another name, or overwrite it")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise FrandiError(
            f"cannot write '{path}': {e.strerror or e}; nothing there was changed (free space, or write elsewhere)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
