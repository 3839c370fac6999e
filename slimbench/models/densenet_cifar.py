"""DenseNet-40 for CIFAR as network slimming prunes it: k=12, three dense blocks of 12 layers,
no bottleneck, compression 1, pre-activation (BN -> ReLU -> conv).

Each transition is BN -> ReLU -> 1x1 conv (channels unchanged) -> 2x2 average pool. The BNs that read
a concatenation are plain BatchNorm2d; ``slimbench.plan(..., residual="select")`` makes them select
channels (``MaskedBatchNorm``) during surgery, as the official channel-selection layer does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimbench.models.init import init_slimming

__all__ = ["CifarDenseNet", "densenet40"]


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class CifarDenseNet(nn.Module):
    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10, stem: int = 16,
                 compression: float = 1.0) -> None:
        super().__init__()
        if (depth - 4) % 3:
            raise ValueError(f"DenseNet (no bottleneck) depth must be 3n+4 (40, ...), got {depth}")
        n = (depth - 4) // 3
        self.conv1 = nn.Conv2d(3, stem, 3, padding=1, bias=False)
        channels = stem
        blocks: list[nn.Module] = []
        for stage in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            blocks.append(nn.Sequential(*layers))
            if stage < 2:
                out = int(channels * compression)
                blocks.append(Transition(channels, out))
                channels = out
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = blocks
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_slimming(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.dense3(self.trans2(self.dense2(self.trans1(self.dense1(x)))))
        x = self.relu(self.bn(x))
        return self.fc(self.pool(x).flatten(1))


def densenet40(num_classes: int = 10, stem: int = 16) -> CifarDenseNet:
    return CifarDenseNet(40, 12, num_classes, stem=stem)
