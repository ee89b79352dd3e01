"""Architectures for the reliability tests, imported by study files as ``tests.reliability._models:NAME``."""

from __future__ import annotations

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
