"""The study's storage, opened the same way by every command and every worker process."""

from __future__ import annotations

from pathlib import Path

from storage import OpenMode, Storage, normalize_url, open_storage

from ._config import StudyConfig


def storage_url(cfg: StudyConfig, override: str | None = None) -> str:
    """The study's storage URL: relative SQLite paths against the study file (against the working folder for
    ``--storage``)."""
    return normalize_url(override or cfg.study.storage, base_dir=cfg.base_dir if not override else Path.cwd())


def open_for(cfg: StudyConfig, override: str | None = None, *, mode: OpenMode = "create") -> Storage:
    """The study's storage; ``mode`` "write" or "read" for commands that need an existing study (see open_storage)."""
    return open_storage(
        storage_url(cfg, override),
        mode=mode,
        heartbeat_interval=cfg.run.heartbeat_interval,
        grace_period=cfg.run.grace_period,
    )
