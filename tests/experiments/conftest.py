"""Fixtures for the experiment smoke tests: one shared database (the synthetic-batch cache), the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DIGITS_WEIGHTS = REPO / "studies" / "models" / "resnet_digits.pt"

STUDY = """
[study]
name = "evaluate-tiny"
storage = "sqlite:///{db}"
sampler = "random"
seed = 0
n_trials = {n_trials}
baselines = [0.2, 0.9]

[model]
architecture = "frandi_core.models:resnet"
weights = "{weights}"
input_shape = [1, 8, 8]

[synthetic]
batch_size = 16
heldout_size = 16
iterations = 5

[space]
sparsity = [0.0, 0.9]
sparsity_step = 0.1
bits = [2, 4, 8]

[recovery]
steps = 3
batch_size = 8

[run]
workers = 1
threads = 1
"""


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
        p.write_text(STUDY.format(db=tmp_path / "tiny.db", n_trials=n_trials, weights=DIGITS_WEIGHTS))
        return p

    return write

