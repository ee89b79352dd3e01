"""Small reference architectures with BatchNorm, used by the quickstart, tests and experiments.

Each is a plain ``nn.Module`` whose top-level children are ``stem``, ``layer1..n`` and ``head``,
so the default feature-regression layers (the main blocks) are easy to see.
"""

from __future__ import annotations

import torch
from torch import nn


def _stem(in_channels: int, width: int) -> nn.Sequential:
    """3x3 convolution, BatchNorm, ReLU: the first layers of both networks."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN pairs and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet scaled down for 8x8 digits or 28x28 Fashion-MNIST."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 64),
        blocks: int = 1,
    ) -> None:
        super().__init__()
        self.stem = _stem(in_channels, widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            layers = [
                BasicBlock(cin if j == 0 else w, w, 1 if (i == 0 or j > 0) else 2) for j in range(blocks)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            cin = w
        self.num_stages = len(widths)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.head(x)


class SeparableBlock(nn.Module):
    """MobileNet-style block: depthwise 3x3 conv-BN-ReLU then pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.pw(torch.relu(self.bn1(self.dw(x))))))


class SeparableNet(nn.Module):
    """A depthwise-separable network with a BatchNorm1d in its classifier."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128)
    ) -> None:
        super().__init__()
        self.stem = _stem(in_channels, widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            self.add_module(f"layer{i + 1}", SeparableBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.num_stages = len(widths)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(cin, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.head(x)


def resnet(**kwargs: object) -> ResNet:
    """Factory used in study files: ``frandi_core.models:resnet``."""
    return ResNet(**kwargs)  # type: ignore[arg-type]


def separable(**kwargs: object) -> SeparableNet:
    """Factory used in study files: ``frandi_core.models:separable``."""
    return SeparableNet(**kwargs)  # type: ignore[arg-type]
