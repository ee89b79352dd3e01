"""A tiny study on a tiny (randomly initialized, BN statistics set) ResNet: fast end-to-end CLI tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from frandi_core.models import resnet

STUDY = """
[study]
name = "tiny"
storage = "sqlite:///{db}"
sampler = "tpe"
seed = 0
n_trials = {n_trials}
baselines = [0.5]

[model]
architecture = "frandi_core.models:resnet"
kwargs = {{ widths = [4, 8] }}
weights = "tiny.pt"
input_shape = [1, 8, 8]

[synthetic]
batch_size = 16
heldout_size = 16
iterations = 10

[space]
sparsity = [0.0, 0.8]
sparsity_step = 0.1
bits = [4, 8, 32]

[recovery]
steps = 5
batch_size = 8

[run]
workers = 1
threads = 1
heartbeat_interval = 1
grace_period = 3
"""


def make_weights(path: Path, seed: int = 0) -> None:
    """A tiny ResNet whose BN running statistics come from a few random batches (no training needed)."""
    torch.manual_seed(seed)
    model = resnet(widths=(4, 8))
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    torch.save(model.state_dict(), path)


@pytest.fixture
def study_file(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny study file (and its weights) into tmp_path; keyword arguments fill the template."""
    make_weights(tmp_path / "tiny.pt")

    def write(name: str = "tiny.toml", *, n_trials: int = 6, db: str = "runs/tiny.db", extra: str = "") -> Path:
        p = tmp_path / name
        p.write_text(STUDY.format(n_trials=n_trials, db=db) + extra)
        return p

    return write

