"""Models written the way users write them (none of them by slimbench's rules).

A VGG in the official network-slimming style (a pooling module built inside forward, then
``x.view(x.size(0), -1)``); a pre-activation ResNet whose ``channel_selection`` module uses numpy
on a 0/1 parameter; and forwards that defeat a channel graph: a BatchNorm called twice, a
division by the channel count read as a number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SlimVGG(nn.Module):
    def __init__(self, cfg=(8, "M", 16, "M", 16), num_classes: int = 10) -> None:
        super().__init__()
        layers, c = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.feature = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):  # 8x8 inputs
        x = self.feature(x)
        x = nn.AvgPool2d(2)(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class channel_selection(nn.Module):  # noqa: N801 - the official repo's name
    def __init__(self, n: int) -> None:
        super().__init__()
        self.indexes = nn.Parameter(torch.ones(n))

    def forward(self, x):
        idx = np.squeeze(np.argwhere(self.indexes.data.cpu().numpy()))
        if idx.size == 1:
            idx = np.resize(idx, (1,))
        return x[:, idx, :, :]


class PreBlock(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.bn1, self.select = nn.BatchNorm2d(c), channel_selection(c)
        self.conv1 = nn.Conv2d(c, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, c, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.select(self.bn1(x)))
        out = self.relu(self.bn2(self.conv1(out)))
        return self.conv2(out) + x


class SelectPreResNet(nn.Module):
    def __init__(self, blocks: int = 2, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.layers = nn.Sequential(*[PreBlock(c, 6) for _ in range(blocks)])
        self.bn, self.select = nn.BatchNorm2d(c), channel_selection(c)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):  # 8x8 inputs
        x = self.layers(self.conv1(x))
        x = self.avgpool(self.relu(self.select(self.bn(x))))
        x = x.view(x.size(0), -1)
        return self.fc(x)


class BNTwice(nn.Module):
    """``self.bn`` normalises two different tensors in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = F.relu(self.bn2(self.c2(y)))
        y = F.relu(self.bn(self.c3(y)))
        return self.fc(y.mean((2, 3)))


class DivByChannels(nn.Module):
    """``y / y.size(1)``: the channel count read as a number changes when channels are removed."""

    def __init__(self, only_broken: bool = False) -> None:
        super().__init__()
        self.only_broken = only_broken
        self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = y / y.size(1)
        y = self.c2(y)
        if not self.only_broken:
            y = F.relu(self.bn2(y))
        return self.fc(y.mean((2, 3)))


class RolledChannels(DivByChannels):
    """``torch.roll`` over the channel dim between two layers: an analysis that took it for a
    pointwise op (a wrong ``register_op_handler``) would prune it wrongly; verification catches it.
    Same layers as ``DivByChannels``, another forward."""

    def forward(self, x):
        y = F.relu(self.bn(self.c1(x)))
        y = self.c2(torch.roll(y, 1, 1))
        if not self.only_broken:
            y = F.relu(self.bn2(y))
        return self.fc(y.mean((2, 3)))


@contextlib.contextmanager
def roll_taken_for_pointwise() -> Iterator[None]:
    """A wrong op handler, as a user could register one: ``torch.roll`` labelled as a pointwise op.
    The analysis itself freezes every pattern it knows to be unsafe, so a model run under this is what
    prune's self-verification has to catch (``RolledChannels``)."""
    from slimbench.analysis.handlers import OP_HANDLERS, pointwise, register_op_handler

    before = OP_HANDLERS.get(torch.roll)
    register_op_handler(torch.roll, pointwise(keeps_zero=True))
    try:
        yield
    finally:
        if before is None:
            OP_HANDLERS.pop(torch.roll, None)
        else:
            OP_HANDLERS[torch.roll] = before
