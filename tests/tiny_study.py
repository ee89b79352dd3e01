"""One template for the tiny study files the search, reliability and experiment tests write, and its weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from frandi_core.models import resnet

STUDY = """
[study]
name = "{name}"
storage = "{url}"
sampler = "{sampler}"
seed = 0
n_trials = {n_trials}
baselines = {baselines}

[model]
architecture = "{architecture}"
kwargs = {kwargs}
weights = "{weights}"
input_shape = [1, 8, 8]

[synthetic]
batch_size = 16
heldout_size = 16
iterations = {iterations}

[space]
layers = {layers}
sparsity = {sparsity}
sparsity_step = 0.1
bits = {bits}

[recovery]
steps = {steps}
lr = {lr}
batch_size = 8

[run]
workers = 1
threads = 1
heartbeat_interval = {heartbeat_interval}
grace_period = {grace_period}
"""

DEFAULTS: dict[str, Any] = {
    "name": "rel",
    "url": "sqlite:///runs/rel.db",
    "sampler": "random",
    "n_trials": 4,
    "baselines": "[0.5]",
    "architecture": "frandi_core.models:resnet",
    "kwargs": "{ widths = [4, 8] }",
    "weights": "tiny.pt",
    "iterations": 5,
    "layers": '["re:.*"]',
    "sparsity": "[0.0, 0.8]",
    "bits": "[4, 8, 32]",
    "steps": 2,
    "lr": 1e-3,
    "heartbeat_interval": 1,
    "grace_period": 3,
}


def study_text(**fields: Any) -> str:
    """The template filled with DEFAULTS overridden by ``fields`` (unknown fields are refused)."""
    unknown = set(fields) - set(DEFAULTS)
    if unknown:
        raise KeyError(f"no template field {sorted(unknown)}; fields: {sorted(DEFAULTS)}")
    return STUDY.format(**(DEFAULTS | fields))


def make_weights(path: Path, seed: int = 0) -> None:
    """A tiny ResNet whose BN running statistics come from a few random batches (no training needed)."""
    torch.manual_seed(seed)
    model = resnet(widths=(4, 8))
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(32, 1, 8, 8) * 2 + 0.5)
    torch.save(model.state_dict(), path)


def stored_trials(path: Path) -> list[Any]:
    """Every trial of the study a study file names, as stored (FrozenTrial objects)."""
    from search import load_config, open_for, open_study

    cfg = load_config(path)
    with open_for(cfg) as st:
        return open_study(cfg, st).get_trials()
