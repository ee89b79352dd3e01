"""Shared fixtures for the frandi_core tests: the digits reference model and one synthetic batch.

Loading the model and synthesizing data are the expensive steps, so both are package-scoped; tests
that use them must not change them (helpers below check that operators leave models untouched).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from frandi_core import ModelSpec, SynthConfig, SyntheticData, load_model, synthesize

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ModelSpec("frandi_core.models:resnet", str(ROOT / "studies/models/resnet_digits.pt"), input_shape=(1, 8, 8))
# small synthesis budget: 64 + 64 samples, 150 Adam steps each (about 11 s, 37 ms a step)
SYNTH = SynthConfig(batch_size=64, heldout_size=64, iterations=150, seed=0)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every state_dict tensor, to compare with after an operator ran."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The model holds exactly the tensors it held at ``snapshot`` time (same keys, equal values)."""
    after = model.state_dict()
    assert list(after) == list(before), "state_dict keys changed"
    changed = [k for k, v in before.items() if not torch.equal(after[k], v)]
    assert not changed, f"tensors changed: {changed[:5]}"


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """Run these tests on one intra-op thread: the tensors are tiny, and on a shared 2-core machine two
    threads spin against other processes (synthesis: 37 ms a step on one thread, 360 ms on two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def reference() -> nn.Module:
    """The digits ResNet (98.9% test accuracy), eval mode. Read-only: never modify it in a test."""
    return load_model(REFERENCE)


@pytest.fixture(scope="package")
def synthetic(reference: nn.Module) -> SyntheticData:
    """One recovery and one held-out batch synthesized from the reference model with ``SYNTH``."""
    return synthesize(reference, REFERENCE.input_shape, SYNTH)
