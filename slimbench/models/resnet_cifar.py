"""CIFAR ResNets of He et al. (2016), section 4.2: 6n+2 layers of basic blocks, 16/32/64 channels.

Two shortcut options where the shape changes:
- ``"A"`` (default, the paper's CIFAR choice): identity with stride-2 subsampling and zero-padded
  channels, no parameters.
- ``"B"``: 1x1 conv + BN projection.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CifarResNet", "PadShortcut", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
           "DEFAULT_SHORTCUT"]

DEFAULT_SHORTCUT = "A"


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad channels up to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"PadShortcut cannot shrink channels ({in_channels} -> {out_channels})")
        self.stride = stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (identity + zero pad) or 'B' (1x1 conv), got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        channels = 16
        stages = []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(channels, width, stride if i == 0 else 1, shortcut))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet20(num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> CifarResNet:
    return CifarResNet(20, num_classes, shortcut)


def resnet32(num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> CifarResNet:
    return CifarResNet(32, num_classes, shortcut)


def resnet44(num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> CifarResNet:
    return CifarResNet(44, num_classes, shortcut)


def resnet56(num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> CifarResNet:
    return CifarResNet(56, num_classes, shortcut)


def resnet110(num_classes: int = 10, shortcut: str = DEFAULT_SHORTCUT) -> CifarResNet:
    return CifarResNet(110, num_classes, shortcut)
