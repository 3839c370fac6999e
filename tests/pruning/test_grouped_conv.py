"""Grouped convs whose groups have as many outputs as inputs are "joined" (depthwise, ResNeXt), and so is a
depthwise conv with a channel multiplier (input i feeds outputs k*i .. k*i+k-1 alone: one channel group,
timm fastvit's downsampling); the others (an expanding grouped conv C -> 4C in 2 groups, in 2-D and 1-D)
keep their inputs and prune their outputs, the same number in every group (timm cpubone's expand convs)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimbench
from slimbench.analysis.graph import build_graph

from helpers import assert_equivalent, conv_linear_macs, randomize_bn


class Expand(nn.Module):
    """stem -> grouped conv (C -> mult * C, ``groups``) -> BN -> ReLU -> 1x1 conv -> BN -> ReLU -> head."""

    def __init__(self, groups: int, mult: int, conv: type[nn.Module] = nn.Conv2d,
                 bn: type[nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        c = 8
        self.stem, self.bn0 = conv(3, c, 3, padding=1, bias=False), bn(c)
        self.grouped, self.bn1 = conv(c, mult * c, 3, padding=1, groups=groups, bias=True), bn(mult * c)
        self.point, self.bn2 = conv(mult * c, 12, 1, bias=False), bn(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        if isinstance(self.stem, nn.Conv1d):
            x = x.flatten(2)
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.grouped(x)))
        x = F.relu(self.bn2(self.point(x)))
        return self.fc(x.flatten(2).mean(2))


MULTIPLIER = {
    "depthwise_multiplier": lambda: Expand(groups=8, mult=2),
    "depthwise_multiplier_conv1d": lambda: Expand(groups=8, mult=3, conv=nn.Conv1d, bn=nn.BatchNorm1d),
}
MODELS = {
    "expand_two_groups": lambda: Expand(groups=2, mult=4),
    "expand_conv1d": lambda: Expand(groups=4, mult=3, conv=nn.Conv1d, bn=nn.BatchNorm1d),
}


def _pruned(build, role: str):
    """The model, its input, plan and pruned model at ratio 0.5, its grouped conv labelled ``role``."""
    torch.manual_seed(0)
    model = randomize_bn(build())
    x = torch.randn(2, 3, 8, 8)
    assert build_graph(model, x).convs["grouped"].role == role
    plan = slimbench.plan(model, x, ratio=0.5)
    return model, x, plan, slimbench.prune(model, x, plan=plan)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_of_a_grouped_conv_are_pruned_equally_per_group(name):
    model, x, plan, pruned = _pruned(MODELS[name], "grouped")
    assert_equivalent(model, x, plan, pruned)
    assert_equivalent(model.double(), x.double(), plan, pruned.double())
    model.float(), pruned.float()
    before, after = model.grouped, pruned.grouped
    assert after.out_channels < before.out_channels  # the multiplier conv's own outputs went
    assert (after.groups, after.in_channels) == (before.groups, before.in_channels)
    assert after.out_channels % after.groups == 0
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []
    # every group keeps the same channels count: the BN mask, read group by group
    mask = plan.masks["bn1"].reshape(before.groups, -1)
    assert len(set(mask.sum(1).tolist())) == 1
    assert (plan.macs_before, plan.macs_after) == (conv_linear_macs(model, x[:1]), conv_linear_macs(pruned, x[:1]))


@pytest.mark.parametrize("name", sorted(MULTIPLIER))
def test_a_depthwise_multiplier_prunes_each_input_with_its_outputs(name):
    model, x, plan, pruned = _pruned(MULTIPLIER[name], "joined")
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []
    assert_equivalent(model.double(), x.double(), plan, pruned.double())
    model.float(), pruned.float()
    before, after = model.grouped, pruned.grouped
    k = before.out_channels // before.in_channels
    assert after.in_channels == after.groups == int(plan.masks["bn0"].sum()) < before.in_channels  # inputs go
    assert after.out_channels == k * after.in_channels  # with their k outputs each
    assert torch.equal(plan.masks["bn1"], plan.masks["bn0"].repeat_interleave(k))
    assert (plan.macs_before, plan.macs_after) == (conv_linear_macs(model, x[:1]), conv_linear_macs(pruned, x[:1]))
    loaded = slimbench.load_pruned_model(MULTIPLIER[name](), pruned.state_dict(), example_inputs=(3, 8, 8)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_a_grouped_conv_keeps_its_inputs_and_says_why():
    model = randomize_bn(MODELS["expand_two_groups"]())
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    stem = graph.bn_class_reason("bn0")
    assert stem is not None and "grouped is a grouped conv with 16 outputs per 4 inputs: its inputs stay" in stem
    assert graph.bn_class_reason("bn1") is None


def test_zero_matches_prune_on_a_grouped_conv():
    model = randomize_bn(MODELS["expand_two_groups"]())
    x = torch.randn(2, 3, 8, 8)
    plan = slimbench.plan(model, x, ratio=0.5)
    zeroed = slimbench.zero(model, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(zeroed(x), slimbench.prune(model, x, plan=plan).eval()(x))


def test_bare_state_dict_of_a_pruned_grouped_conv_is_rebuilt(tmp_path):
    model = randomize_bn(MODELS["expand_two_groups"]())
    x = torch.randn(2, 3, 8, 8)
    pruned = slimbench.prune(model, x, ratio=0.5).eval()
    loaded = slimbench.load_pruned_model(MODELS["expand_two_groups"](), pruned.state_dict(),
                                         example_inputs=(3, 8, 8)).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
