"""capture: hooks keyed by module name, always removed, missing names fail loudly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from frandi_core import FrandiError, capture


def model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))


def hook_count(m: nn.Module) -> int:
    return sum(len(x._forward_hooks) for x in m.modules())


def test_capture_outputs_and_inputs_by_name() -> None:
    m = model()
    x = torch.randn(5, 3)
    with capture(m, ["0", "1.1"]) as outs, capture(m, ["1.1"], inputs=True) as ins:
        y = m(x)
    assert torch.equal(outs["1.1"], y)
    assert torch.equal(outs["0"], m[0](x))
    assert torch.equal(ins["1.1"], torch.relu(m[0](x)))


def test_hooks_are_removed_on_exit_and_on_error() -> None:
    m = model()
    with capture(m, ["0", "1.1"]):
        assert hook_count(m) == 2
    assert hook_count(m) == 0
    with pytest.raises(RuntimeError), capture(m, ["0"]):
        raise RuntimeError("boom")
    assert hook_count(m) == 0


def test_missing_name_fails_loudly_and_leaves_no_hook() -> None:
    m = model()
    with pytest.raises(FrandiError, match="'1.2'"), capture(m, ["0", "1.2"]):
        pass
    assert hook_count(m) == 0
