"""Channel rules and op handlers are registries: a user's own module or op is one registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import slimbench
import thop_ext
from slimbench.analysis.handlers import OP_HANDLERS, pointwise, register_op_handler
from slimbench.core.rules import ConvRule, register_module_rule, rule_for, unregister_module_rule

from helpers import assert_equivalent, conv_linear_macs, randomize_bn


class MyConv(nn.Module):
    """A conv-like module that is no nn.Conv2d: a weight, a bias, and F.conv2d in its forward."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1)


class MyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = MyConv(3, 8), nn.BatchNorm2d(8)
        self.c2, self.b2 = MyConv(8, 12), nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def my_conv_rule():
    register_module_rule(MyConv, ConvRule())
    yield
    unregister_module_rule(MyConv)


def test_unregistered_custom_conv_freezes_the_channels_it_reads():
    rows = {r["bn"]: r for r in slimbench.explain(randomize_bn(MyNet()), (3, 8, 8))}
    assert rows["b1"]["status"] == "not prunable" and "conv2d" in rows["b1"]["reason"]


def test_registered_custom_conv_is_pruned_exactly(my_conv_rule):
    model = randomize_bn(MyNet()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert slimbench.prunable_bn_names(model, x) == ["b1", "b2"]
    plan = slimbench.plan(model, x, ratio=0.5)
    pruned = slimbench.prune(model, x, plan=plan)
    kept1, kept2 = int(plan.masks["b1"].sum()), int(plan.masks["b2"].sum())
    assert type(pruned.c1) is MyConv and kept1 < 8 and kept2 < 12
    assert pruned.c1.weight.shape == (kept1, 3, 3, 3) and pruned.c2.weight.shape == (kept2, kept1, 3, 3)
    assert pruned.head.in_features == kept2
    assert_equivalent(model, x, plan, pruned=pruned)  # pruned == zeroed, float64, rel 1e-9
    zeroed = slimbench.zero(model, plan)
    with torch.no_grad():
        assert torch.allclose(zeroed(x), pruned(x), rtol=1e-9, atol=1e-12)
    assert model.c1.weight.shape == (8, 3, 3, 3)  # the caller's model is untouched


def test_registered_custom_conv_is_counted_as_a_conv(my_conv_rule):
    model = randomize_bn(MyNet())
    plan = slimbench.plan(model, (3, 8, 8), ratio=0.5)
    pruned = slimbench.prune(model, (3, 8, 8), plan=plan)
    x = torch.randn(1, 3, 8, 8)
    assert thop_ext.profile(pruned, (3, 8, 8)).macs == conv_linear_macs(pruned, x)
    assert thop_ext.profile(slimbench.zero(model, plan), (3, 8, 8)).macs == conv_linear_macs(pruned, x)


def test_rules_are_found_along_the_mro():
    class MyBN(nn.BatchNorm2d):
        pass

    assert rule_for(MyBN(4)) is rule_for(nn.BatchNorm2d(4))
    assert rule_for(MyConv(1, 1)) is None
    with pytest.raises(TypeError, match="ChannelRule"):
        register_module_rule(MyConv, object())


@fx.wrap
def scale_by_two(x):
    return x * 2


class WithWrappedFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 1), nn.BatchNorm2d(6)

    def forward(self, x):
        return self.bn2(self.conv2(scale_by_two(F.relu(self.bn(self.conv(x))))))


def test_register_op_handler_maps_a_new_op():
    model = randomize_bn(WithWrappedFunction())
    rows = {r["bn"]: r for r in slimbench.explain(model, (3, 8, 8))}
    assert rows["bn"]["status"] == "not prunable" and "scale_by_two" in rows["bn"]["reason"]
    register_op_handler(scale_by_two, pointwise(keeps_zero=True))
    try:
        rows = {r["bn"]: r for r in slimbench.explain(model, (3, 8, 8))}
        assert rows["bn"]["status"] == "prunable"
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        model = model.double()
        assert_equivalent(model, x, slimbench.plan(model, x, ratio=0.5))
    finally:
        del OP_HANDLERS[scale_by_two]


class SamePadConv(nn.Conv2d):
    """A Conv2d subclass that pads "same" from the input size in its forward (TF-style padding)."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SamePadNet(nn.Module):
    """Two stride-2 branches summed: 3x3 "same" (5x5 from 9x9, 4x4 unpadded) and 1x1 (5x5)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.same, self.b1 = SamePadConv(8, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8)
        self.short, self.b2 = nn.Conv2d(8, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.b0(self.stem(x)))
        return self.head(F.relu(self.b1(self.same(x)) + self.b2(self.short(x))).mean((2, 3)))


def test_a_conv_subclass_with_its_own_forward_is_sized_by_that_forward():
    model = randomize_bn(SamePadNet()).double()
    x = torch.randn(1, 3, 9, 9, dtype=torch.float64)
    plan = slimbench.plan(model, x, ratio=0.5, residual="shared")
    pruned = slimbench.prune(model, x, plan=plan)
    assert type(pruned.same) is SamePadConv and pruned.same.in_channels < 8
    assert_equivalent(model, x, plan, pruned=pruned)


class StandardizedConv(nn.Conv2d):
    """Weight standardisation in the forward: each filter normalised over its inputs and kernel."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.var((1, 2, 3), keepdim=True, unbiased=False) + 1e-5).sqrt()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class StandardizedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b0 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.std, self.b1 = StandardizedConv(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.b0(self.stem(x)))
        return self.head(F.relu(self.b1(self.std(x))).mean((2, 3)))


def test_a_conv_whose_forward_transforms_its_weight_is_not_sliced():
    """Removing an input of a standardised filter changes its mean and variance: the channels stay
    (an unverified prune would return a wrong model), with the reason; a same-padding forward is sliced."""
    model = randomize_bn(StandardizedNet()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    rows = {r["bn"]: r for r in slimbench.explain(model, x)}
    assert rows["b0"]["status"] == "not prunable" and "StandardizedConv's own forward changes" in rows["b0"]["reason"]
    plan = slimbench.plan(model, x, ratio=0.5)
    assert "b0" not in plan.masks
    pruned = slimbench.prune(model, x, plan=plan, verify=False)
    assert_equivalent(model, x, plan, pruned=pruned)
    assert pruned.std.in_channels == 8
