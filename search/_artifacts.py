"""Exported files attached to their trials, in a file-system artifact store that optuna-dashboard serves."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import FrozenTrial

from storage import Storage, StorageError

from ._config import StudyConfig
from ._errors import ConfigError
from ._records import DASHBOARD_ARTIFACTS


def artifact_dir(cfg: StudyConfig, storage: Storage) -> Path:
    """[study] artifacts (relative to the study file), else a folder beside the SQLite database."""
    if cfg.study.artifacts:
        return (cfg.base_dir / cfg.study.artifacts).resolve()
    if storage.url.startswith("sqlite:///"):
        db = Path(storage.url[len("sqlite:///") :])
        return db.with_name(f"{db.stem}-artifacts")
    raise ConfigError(
        "--attach needs a folder for the study's artifacts: set [study] artifacts = \"folder\" in the study file"
    )


def artifact_store(cfg: StudyConfig, storage: Storage) -> FileSystemArtifactStore | None:
    """The study's artifact store, if one was ever written (for the dashboard)."""
    try:
        folder = artifact_dir(cfg, storage)
    except ConfigError:
        return None
    return FileSystemArtifactStore(folder) if folder.is_dir() else None


def attach(storage: Storage, study: optuna.Study, trial: FrozenTrial, folder: Path, name: str, data: bytes) -> str:
    """Store ``data`` in ``folder`` as a file named ``name`` on ``trial``'s dashboard page; returns its artifact id."""
    artifact_id = str(uuid.uuid4())
    try:
        folder.mkdir(parents=True, exist_ok=True)
        FileSystemArtifactStore(folder).write(artifact_id, io.BytesIO(data))
    except OSError as e:
        (folder / artifact_id).unlink(missing_ok=True)
        raise StorageError(
            f"cannot store the artifact in '{folder}': {e.strerror or e}; the export itself was written"
        ) from None
    # Optuna refuses new attributes on a finished trial, and optuna-dashboard lists a finished trial's artifacts
    # from study system attributes "dashboard:artifacts:<trial id>:<artifact id>" (its own upload format for
    # them). tests/search/test_export.py fails if the dashboard stops listing and serving them.
    meta = {"artifact_id": artifact_id, "filename": name, "mimetype": "application/octet-stream", "encoding": None}
    optuna_storage = storage.optuna
    study_id = optuna_storage.get_study_id_from_name(study.study_name)
    trial_id = optuna_storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    optuna_storage.set_study_system_attr(study_id, f"{DASHBOARD_ARTIFACTS}{trial_id}:{artifact_id}", json.dumps(meta))
    return artifact_id
