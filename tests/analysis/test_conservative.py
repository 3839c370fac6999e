"""Conservative rules at the root: what the channel graph cannot prove is frozen, with a reason.

Each model below was pruned into a wrong model (or one that crashes) before these rules, except
where noted; now ``prune(model, x, ratio=0.5)`` equals the zeroed-BN reference in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimbench

from helpers import randomize_bn


def cbr(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DivBySize(nn.Module):  # before: relative error 4e-1
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        y = self.a(x)
        return self.b(y / y.size(1))


class ShapeUnpackArithmetic(nn.Module):  # before: relative error 3e-1
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        return self.b(y * c ** -0.5)


class ShapeIndex(nn.Module):  # before: wrong (y * 4 in the pruned model, y * 8 in the zeroed one)
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * y.shape[1])


class Heads(nn.Module):  # channels regrouped into heads, mixed by matmul and softmax (frozen before too)
    def __init__(self, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        y = self.a(x)
        n, c, h, w = y.shape
        q = y.reshape(n, self.heads, c // self.heads, h * w)
        attn = torch.softmax(q.transpose(-1, -2) @ q, -1)
        return self.b((q @ attn).reshape(n, c, h, w))


class SharedBN(nn.Module):  # before: crash, running_mean should contain 8 elements not 4
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.out = cbr(16, 4)

    def forward(self, x):
        return self.out(torch.cat([F.relu(self.bn(self.c1(x))), F.relu(self.bn(self.c2(x)))], 1))


class SharedConv(nn.Module):  # before: crash, the second call's input kept other channels
    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(8)
        self.head = cbr(8, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv(self.a(x))))
        return self.head(F.relu(self.bn2(self.conv(y))))


class SharedBNOnAParameter(nn.Module):  # one call site reads a tensor without channel labels
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.prior = nn.Parameter(torch.randn(1, 8, 4, 4))
        self.b = cbr(8, 8)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.b(y * self.bn(self.prior).mean())


class ChannelMean(nn.Module):  # a mean over dim 1: the divisor would change (frozen before too)
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)
        self.sa = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * torch.sigmoid(self.sa(y.mean(1, keepdim=True))))


class UnknownOp(nn.Module):  # an op no handler maps (frozen before too)
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), 1, 1))


class SEView(nn.Module):  # the SENet idiom: b, c = x.size() sizes a view that keeps channels: stays prunable
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        y = self.a(x)
        b, c, _, _ = y.size()
        z = F.adaptive_avg_pool2d(y, 1).view(b, c)
        z = torch.sigmoid(self.fc(z)).view(b, c, 1, 1)
        return self.b(y * z.expand_as(y))


class CountSizesOtherChannels(nn.Module):  # y's channel count sizes a view of z's channels
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = cbr(3, 8), cbr(3, 8), cbr(8, 4)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        n, c, h, w = y.shape
        s = F.adaptive_avg_pool2d(z, 1).view(n, c)
        return self.head(s) + self.c(y).mean((2, 3))


class NumelAsValue(nn.Module):  # an op no handler maps, returning a number: before, a wrong model
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        y = self.a(x)
        return self.b(y * (1000.0 / torch.numel(y)))


class TensorAttribute(nn.Module):  # x.mT is a getattr that returns a tensor: before, a crash
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(8, 8)

    def forward(self, x):
        return self.b(self.a(x).mT.mT)


CASES = {  # model, BN to look at, its expected status, words its reason must contain
    "div_by_size": (DivBySize, "a.1", "not prunable", "size (node 'size') reads the channel count as a value"),
    "shape_unpack": (ShapeUnpackArithmetic, "a.1", "not prunable", "reads the channel count as a value"),
    "shape_index": (ShapeIndex, "a.1", "not prunable", "reads the channel count as a value"),
    "heads": (Heads, "a.1", "not prunable", "channel count"),
    "shared_bn": (SharedBN, "bn", "prunable", "called 2 times in one forward"),
    "shared_conv": (SharedConv, "bn2", "prunable", "called 2 times in one forward"),
    "channel_mean": (ChannelMean, "a.1", "not prunable", "mean (node 'mean') reduces over the batch or channels"),
    "unknown_op": (UnknownOp, "a.1", "not prunable", "roll (node 'roll') is not an op slimbench maps"),
    "shared_bn_on_a_parameter": (SharedBNOnAParameter, "bn", "not prunable",
                                 "bn is called 2 times in one forward and not every call's channels could be followed"),
    "numel_as_value": (NumelAsValue, "a.1", "not prunable", "numel (node 'numel') is not an op slimbench maps"),
    "tensor_attribute": (TensorAttribute, "a.1", "not prunable", "is not an op slimbench maps"),
    "se_view": (SEView, "a.1", "prunable", ""),
    "count_sizes_other_channels": (CountSizesOtherChannels, "a.1", "not prunable", "whose channels are not the ones"),
}


def _pruned_equals_zeroed(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    plan = slimbench.plan(model, x, ratio=0.5)
    pruned = slimbench.prune(model, x, ratio=0.5).eval()
    with torch.no_grad():
        ref = slimbench.zero_bn_channels(model, plan).eval()(x)
        out = pruned(x)
    err = ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    assert err <= 1e-9, f"pruned model differs from the zeroed model by {err:.3g}"
    return {name: int((~mask).sum()) for name, mask in plan.masks.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_pruned_equals_zeroed_and_explain_names_the_reason(case):
    cls, bn, status, reason = CASES[case]
    torch.manual_seed(0)
    model = randomize_bn(cls()).double()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    removed = _pruned_equals_zeroed(model, x)
    row = {r["bn"]: r for r in slimbench.explain(model, x)}[bn]
    assert row["status"] == status and reason in row["reason"], row
    assert (removed.get(bn, 0) > 0) == (status == "prunable")


def test_shared_conv_couples_every_call_site():
    model = randomize_bn(SharedConv())
    graph = slimbench.analysis.graph.build_graph(model, (3, 4, 4))
    classes = {name: set(graph.class_of[graph.bns[name].gids].tolist()) for name in ("a.1", "bn1", "bn2")}
    assert classes["a.1"] == classes["bn1"] == classes["bn2"]
    assert graph.convs["conv"].calls == 2
    assert graph.macs() == 2 * 8 * 8 * 9 * 16 + 3 * 8 * 9 * 16 + 8 * 4 * 9 * 16  # both calls counted
