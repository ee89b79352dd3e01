"""A tiny study on a tiny (randomly initialized, BN statistics set) ResNet: fast end-to-end CLI tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tiny_study import make_weights, study_text


@pytest.fixture
def study_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny study file (and its weights) into tmp_path; keyword arguments fill the template."""
    make_weights(tmp_path / "tiny.pt")

    def write(name: str = "tiny.toml", *, n_trials: int = 6, db: str = "runs/tiny.db") -> Path:
        p = tmp_path / name
        p.write_text(
            study_text(name="tiny", url=f"sqlite:///{db}", sampler="tpe", n_trials=n_trials, iterations=10, steps=5)
        )
        return p

    return write
