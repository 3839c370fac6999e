"""Small models that exercise one coupling pattern each (the torchvision families cover the rest)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cbr(cin: int, cout: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class LoopOverChildren(nn.Module):
    """Forward iterates named_children(): netslim lost the names of such nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(8, 16, 2), cbr(16, 8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x):
        for _, child in self.named_children():
            x = child(x)
        return x


class BNShortcut(nn.Module):
    """A residual whose shortcut is a BatchNorm applied to another BatchNorm's output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.bn_short = nn.BatchNorm2d(8)
        self.body = nn.Sequential(cbr(8, 12), nn.Conv2d(12, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = self.bn0(self.stem(x))
        y = F.relu(self.body(F.relu(x)) + self.bn_short(x))
        return self.head(torch.flatten(y, 1))


class PreActResidual(nn.Module):
    """Pre-activation blocks: the BN of each block reads the residual sum (channel selection)."""

    def __init__(self, width: int = 8, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 6, 1, bias=False),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, width, 3, padding=1, bias=False))
            for _ in range(blocks))
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        x = F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1)
        return self.fc(x.flatten(1))


class DenseConcat(nn.Module):
    """DenseNet-style: every layer reads the concatenation of all earlier outputs through its BN."""

    def __init__(self, growth: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(6 + i * growth), nn.ReLU(),
                          nn.Conv2d(6 + i * growth, growth, 3, padding=1, bias=False))
            for i in range(layers))
        width = 6 + layers * growth
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1))


class PostActResidual(nn.Module):
    """ResNet basic blocks (post-activation), one with a 1x1 projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = cbr(3, 8)
        self.block1 = nn.Sequential(cbr(8, 8), nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.block2 = nn.Sequential(cbr(8, 16, 2), nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.proj = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.block1(x))
        x = F.relu(self.proj(x) + self.block2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.bn(self.conv(x))
        if x.sum() > 0:
            return x.relu()
        return x


class WithUntraceableChild(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.front = cbr(3, 8)
        self.odd = DataDependent()
        self.back = cbr(8, 8)

    def forward(self, x):
        return self.back(self.front(x)), self.odd(x)


class ShapeBranching(nn.Module):
    """Python control flow on tensor shapes: plain fx cannot trace it, fx with meta shapes can."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        if x.shape[-1] != 8:
            raise ValueError("expects 8x8 inputs")
        x = self.a(x)
        if x.size(1) > 4:
            x = self.b(x)
        return self.fc(x.mean((2, 3)))
