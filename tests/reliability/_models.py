"""Architectures for the reliability tests, imported by study files as ``tests.reliability._models:NAME``."""

from __future__ import annotations

import importlib
import sys

import torch
from torch import nn


class Tempered(nn.Module):
    """A tiny BN network that divides its features by a learned temperature (a 1x1 Linear).

    Pruning that one weight makes the temperature 0 and the forward inf/NaN: a real way a policy breaks a model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.temperature = nn.Linear(1, 1, bias=False)
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        t = self.temperature(x.new_ones(1, 1))
        return self.head(self.body(x) / t)


def tempered() -> nn.Module:
    return Tempered()


def no_bn() -> nn.Module:
    """A plain MLP: nothing to invert, so it cannot be compressed data-free."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def save_tempered(path: object) -> None:
    """Weights with temperature 1 and BN statistics from a few random batches."""
    torch.manual_seed(0)
    model = Tempered()
    with torch.no_grad():
        model.temperature.weight.fill_(1.0)
        model.train()
        for _ in range(10):
            model(torch.randn(32, 1, 8, 8))
    torch.save(model.state_dict(), path)  # type: ignore[arg-type]


class _Litter:
    """Garbage whose ``__del__`` imports a module afresh and computes a little: the kinds of code where Python
    swallows an exception (``__del__``, importlib's module-lock weakref callback), run often in the main thread."""

    def __del__(self) -> None:
        sys.modules.pop("tests.reliability._fresh", None)
        importlib.import_module("tests.reliability._fresh")
        total = 0
        for i in range(10_000):
            total += i * i


class Littered(nn.Module):
    """A tiny BN network whose every forward leaves ``_Litter`` behind: a signal often lands in a swallowing place."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            _Litter()
        return self.head(self.body(self.stem(x)))


def littered() -> nn.Module:
    return Littered()


def save_littered(path: object) -> None:
    """Weights with BN statistics from a few random batches."""
    torch.manual_seed(0)
    model = Littered()
    with torch.no_grad():
        model.train()
        for _ in range(5):
            model(torch.randn(32, 1, 8, 8))
    torch.save(model.state_dict(), path)  # type: ignore[arg-type]
