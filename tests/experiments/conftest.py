"""Fixtures for the experiment smoke tests: one shared database (the synthetic-batch cache), the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.tiny_study import study_text

REPO = Path(__file__).resolve().parents[2]
DIGITS_WEIGHTS = REPO / "studies" / "models" / "resnet_digits.pt"

@pytest.fixture(scope="session")
def shared_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database for every smoke test, so the digits synthetic batch is made once."""
    torch.set_num_threads(1)
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'experiments.db'}"


@pytest.fixture
def tiny_study(tmp_path: Path) -> Callable[..., Path]:
    """A tiny study on the bundled (trained) digits ResNet: a few trials of a few FR steps."""

    def write(*, n_trials: int = 4) -> Path:
        p = tmp_path / "tiny.toml"
        p.write_text(
            study_text(
                name="evaluate-tiny", url=f"sqlite:///{tmp_path / 'tiny.db'}", n_trials=n_trials, kwargs="{}",
                weights=DIGITS_WEIGHTS, baselines="[0.2, 0.9]", sparsity="[0.0, 0.9]", bits="[2, 4, 8]", steps=3,
            )
        )  # fmt: skip
        return p

    return write

