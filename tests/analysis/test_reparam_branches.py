"""Re-parameterisable blocks (MobileOne / RepVGG style): parallel conv+BN branches summed, an
identity BN when shapes allow, and ``0`` standing in for an absent branch (``skip = 0``; ``out = 0``
then ``out = out + branch(x)``). Adding the number 0 keeps a pruned channel at exactly 0, so the
sum stays prunable under residual='shared' (before: ``x + 0`` hid the BN zeros and froze everything).
"""

from __future__ import annotations

import torch
from torch import nn

import slimbench

from helpers import assert_equivalent, randomize_bn


def conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class RepBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, depthwise: bool = False,
                 branches: int = 2, offset: float = 0.0) -> None:
        super().__init__()
        self.offset = offset
        groups = cin if depthwise else 1
        self.identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None
        self.scale = conv_bn(cin, cout, 1, stride, groups) if k > 1 else None
        self.kxk = nn.ModuleList(conv_bn(cin, cout, k, stride, groups) for _ in range(branches))

    def forward(self, x):
        skip = 0
        if self.identity is not None:
            skip = self.identity(x)
        out = 0
        if self.scale is not None:
            out = self.scale(x)
        for branch in self.kxk:
            out = out + branch(x)
        return torch.relu(out + skip + self.offset)


class RepNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = RepBlock(3, 8, stride=2, branches=1)
        self.dw = RepBlock(8, 8, depthwise=True)  # identity BN, scale and kxk branches, all on one class
        self.pw = RepBlock(8, 16, k=1)  # no scale branch, no identity: 0 + branch, then + 0
        self.dw2 = RepBlock(16, 16, stride=2, depthwise=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.dw2(self.pw(self.dw(self.stem(x)))).mean((2, 3)))


X = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_summed_branches_with_absent_ones_are_coupled_not_unsafe():
    model = randomize_bn(RepNet(), seed=4).double()
    rows = slimbench.explain(model, X, residual="keep")
    assert {r["status"] for r in rows} == {"coupled (residual)"}


def test_summed_branches_prune_exactly():
    model = randomize_bn(RepNet(), seed=4).double()
    plan = slimbench.plan(model, X, ratio=0.5, residual="shared")
    pruned = slimbench.prune(model, X, plan=plan)
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []
    assert plan.macs_after < 0.8 * plan.macs_before
    assert pruned.pw.kxk[0][0].out_channels < 16
    assert_equivalent(model, X, plan, pruned=pruned)


def test_adding_a_non_zero_number_still_hides_the_zeros():
    model = RepNet()
    model.dw2.offset = 0.5  # fc then reads 0.5 where the zeroed model had 0: the pw / dw2 class is unsafe
    rows = {r["bn"]: r for r in slimbench.explain(randomize_bn(model, seed=4).double(), X, residual="shared")}
    assert rows["pw.kxk.0.1"]["status"] == "not prunable" and "fc reads it" in rows["pw.kxk.0.1"]["reason"]
    assert rows["dw.identity"]["status"] == "prunable (shared)"
