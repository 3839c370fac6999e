"""PruningPlan as data, budgets, rounding, and clear errors for bad options."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import slimbench
from slimbench import PruningPlan

from helpers import assert_equivalent, conv_linear_macs, randomize_bn
from nets import LoopOverChildren, PostActResidual


@pytest.fixture(scope="module")
def resnet():
    return randomize_bn(torchvision.models.resnet18())


def test_plan_is_json_and_round_trips(resnet):
    x = torch.randn(1, 3, 32, 32)
    plan = slimbench.plan(resnet, x, ratio=0.5)
    text = plan.to_json()
    data = json.loads(text)
    assert data["method"] == "network_slimming" and data["input_shapes"] == [[1, 3, 32, 32]]
    again = PruningPlan.from_json(text)
    assert again.masks.keys() == plan.masks.keys()
    assert all(torch.equal(again.masks[k], plan.masks[k]) for k in plan.masks)
    assert_equivalent(resnet, x, again)  # a plan read back from JSON prunes the same way
    rows = plan.summary()
    assert {"bn", "before", "after", "role"} <= set(rows[0])
    assert sum(r["before"] - r["after"] for r in rows) == plan.pruned_channels


def test_plan_does_not_touch_the_model(resnet):
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    resnet.train()
    hooks = dict(resnet._forward_hooks)
    slimbench.plan(resnet, (3, 32, 32), ratio=0.5)
    slimbench.prune(resnet, (3, 32, 32), ratio=0.5)
    assert resnet.training and all(m.training for m in resnet.modules())
    assert dict(resnet._forward_hooks) == hooks
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in state.items())
    resnet.eval()


@pytest.mark.parametrize("method", ["network_slimming", "uniform", "optimal_thresholding"])
def test_target_macs_meets_the_budget(resnet, method):
    x = torch.randn(1, 3, 32, 32)
    plan = slimbench.plan(resnet, x, method=method, target_macs=0.6)
    assert plan.macs_after <= 0.6 * plan.macs_before
    assert plan.macs_after >= 0.5 * plan.macs_before  # and does not overshoot by much
    assert conv_linear_macs(slimbench.prune(resnet, x, plan=plan), x) == plan.macs_after


def test_unreachable_budget_is_an_error(resnet):
    with pytest.raises(ValueError, match="out of reach"):
        slimbench.plan(resnet, (3, 32, 32), target_macs=0.01, residual="keep")


def test_round_to_keeps_multiples(resnet):
    plan = slimbench.plan(resnet, (3, 32, 32), ratio=0.5, round_to=8)
    counts = [int(m.sum()) for m in plan.masks.values()]
    assert counts and all(c % 8 == 0 for c in counts)
    pruned = slimbench.prune(resnet, (3, 32, 32), plan=plan)
    assert all(m.out_channels % 8 == 0 for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
    ({"ratio": -0.1}, r"ratio must be"),
    ({"method": "l1"}, r"unknown method 'l1'; choose one of network_slimming"),
    ({"residual": "both"}, r"residual must be one of"),
    ({"round_to": 0}, r"round_to must be a positive integer"),
    ({"target_macs": 1.5}, r"target_macs must be in \(0, 1\]"),
    ({"branches": "remove", "method": "uniform"}, r"branches='remove'.*network_slimming"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slimbench.plan(LoopOverChildren(), (3, 16, 16), **kwargs)


def test_plan_for_another_model_is_refused(resnet):
    plan = slimbench.plan(LoopOverChildren(), (3, 16, 16), ratio=0.5)
    with pytest.raises(ValueError, match="does not have"):
        slimbench.prune(resnet, plan=plan)


def test_inconsistent_plan_is_refused():
    model = randomize_bn(torchvision.models.resnet18())
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.5, residual="shared")
    plan.masks["layer1.0.bn2"] = torch.ones_like(plan.masks["layer1.0.bn2"])
    with pytest.raises(ValueError, match="coupled"):
        slimbench.prune(model, plan=plan)


# -- option hygiene (issues 13, 15) ---------------------------------------------------------------

class RepBlock(nn.Module):
    """RepVGG-style: two conv+BN branches summed, so every BN sits in a coupled residual group."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.b = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.a(x) + self.b(x))


class RepNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(RepBlock(3, 16), RepBlock(16, 16), RepBlock(16, 16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.blocks(x).mean((2, 3)))


def test_all_coupled_plan_warns_with_the_reason_and_a_computed_alternative():
    model = randomize_bn(RepNet())
    with pytest.warns(UserWarning, match=r"removes only 0\.0% .*all 6 BNs are in coupled residual groups.*"
                                         r"residual='shared' removes (\d+)% of the MACs") as record:
        plan = slimbench.plan(model, (3, 16, 16), ratio=0.5, residual="keep")
    assert plan.macs_after == plan.macs_before
    claimed = int(re.search(r"shared' removes (\d+)%", str(record[-1].message)).group(1))
    shared = slimbench.plan(model, (3, 16, 16), ratio=0.5, residual="shared")
    assert claimed == round(100 * (1 - shared.macs_after / shared.macs_before)) and claimed > 5


def test_small_ratio_does_not_warn(resnet):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slimbench.plan(resnet, (3, 32, 32), ratio=0.05)


def test_ratio_and_target_macs_together_are_refused(resnet):
    with pytest.raises(ValueError, match="ratio .* or target_macs .* not both"):
        slimbench.plan(resnet, (3, 32, 32), ratio=0.5, target_macs=0.5)


def test_target_macs_plan_records_no_ratio(resnet):
    plan = slimbench.plan(resnet, (3, 32, 32), target_macs=0.7)
    assert plan.ratio is None and plan.options["target_macs"] == 0.7


def test_unreachable_budget_reports_the_reachable_minimum(resnet):
    most = slimbench.plan(resnet, (3, 32, 32), ratio=0.999, residual="keep")
    floor = most.macs_after / most.macs_before
    with pytest.raises(ValueError, match=r"out of reach") as err:
        slimbench.plan(resnet, (3, 32, 32), target_macs=0.01, residual="keep")
    assert f"leaves {floor:.3f} of the MACs" in str(err.value) and "1.000" not in str(err.value)
    reachable = slimbench.plan(resnet, (3, 32, 32), residual="keep",
                               target_macs=float(re.search(r">= ([\d.]+)", str(err.value))[1]))
    assert reachable.macs_after < reachable.macs_before


@pytest.mark.parametrize("value", [np.float32(0.3), np.float64(0.3), torch.tensor(0.3), np.array(0.3)])
def test_numpy_and_torch_scalars_are_numbers(resnet, value):
    plan = slimbench.plan(resnet, (3, 32, 32), ratio=value, round_to=np.int64(4))
    assert plan.ratio == 0.3 and plan.options["round_to"] == 4
    assert plan.to_dict()["masks"] == slimbench.plan(resnet, (3, 32, 32), ratio=0.3, round_to=4).to_dict()["masks"]


def test_round_to_larger_than_every_layer_is_an_error(resnet):
    with pytest.raises(ValueError, match=r"round_to=1000 leaves nothing to prune.*512 channels; pass round_to < 512"):
        slimbench.plan(resnet, (3, 32, 32), round_to=1000)


def test_round_to_keeps_small_layers_whole_and_says_so():
    model = randomize_bn(LoopOverChildren())  # BNs of 8, 16 and 8 channels
    plan = slimbench.plan(model, (3, 16, 16), ratio=0.5, round_to=8)
    assert {r["bn"]: r["after"] for r in plan.summary()} == {"a.1": 8, "b.1": 8, "c.1": 8}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prune_ratio": 0.3}, r"unknown plan option 'prune_ratio' .*; did you mean ratio\?"),
    ({"channel_select": True}, r"did you mean residual='select'\?"),
    ({"ratoi": 0.3}, r"'ratoi' .*did you mean ratio\?"),
    ({"delta": 0.1}, r"criterion 'network_slimming' has no option 'delta' .*option of optimal_thresholding"),
    ({"method": "optimal_thresholding", "delta": 0.1, "ratio": 0.3}, r"delta=0.1 decides .* ratio would be ignored"),
    ({"method": "optimal_thresholding", "delta": 0.1, "target_macs": 0.5}, r"target_macs would be ignored"),
    ({"method": "optimal_thresholding", "delta": 2}, r"delta \(optimal_thresholding\) must be a number in \(0, 1\)"),
    ({"ratio": True}, r"ratio must be a number, got bool"),
    ({"round_to": 2.5}, r"round_to must be a positive integer"),
    ({"importance": "l2"}, r"importance must be one of gamma, bn_scale"),
])
def test_ignored_and_unknown_options_raise(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        slimbench.plan(randomize_bn(LoopOverChildren()), (3, 16, 16), **kwargs)


def test_delta_alone_decides_the_amount():
    plan = slimbench.plan(randomize_bn(LoopOverChildren()), (3, 16, 16), method="optimal_thresholding", delta=0.2)
    assert plan.ratio is None and plan.options["delta"] == 0.2 and plan.pruned_channels > 0


def test_plan_that_removes_every_channel_of_a_bn_is_refused(resnet):
    plan = slimbench.plan(resnet, (3, 32, 32), ratio=0.5)
    plan.masks["layer1.0.bn1"] = torch.zeros_like(plan.masks["layer1.0.bn1"])
    with pytest.raises(ValueError, match=r"removes every channel of 'layer1.0.bn1'.*at least one"):
        slimbench.prune(resnet, plan=plan)


def test_zero_bn_channels_with_another_models_plan_names_the_bn(resnet):
    plan = slimbench.plan(randomize_bn(LoopOverChildren()), (3, 16, 16), ratio=0.5)
    with pytest.raises(ValueError, match=r"BatchNorm 'a.1', which this model does not have"):
        slimbench.zero_bn_channels(resnet, plan)


# -- ignored_layers and layer_ratios --------------------------------------------------------------

def test_ignored_layers_keep_their_channels(resnet):
    x = torch.randn(1, 3, 32, 32)
    plain = slimbench.plan(resnet, x, ratio=0.6)
    assert {"layer1.0.bn1", "layer2.0.bn1"} <= set(plain.masks)  # pruned without ignored_layers
    plan = slimbench.plan(resnet, x, ratio=0.6, ignored_layers=["layer1.0.bn1", resnet.layer2[0].conv1, "layer3"])
    kept = {r["bn"] for r in plan.summary() if r["after"] == r["before"]}
    assert {"layer1.0.bn1", "layer2.0.bn1", "layer3.0.bn1", "layer3.1.bn1"} <= kept
    assert plan.pruned_channels > 0 and plan.options["ignored_layers"] == ["layer1.0.bn1", "layer2.0.conv1", "layer3"]
    assert_equivalent(resnet, x, plan)
    again = PruningPlan.from_json(plan.to_json())
    assert again.options["ignored_layers"] == plan.options["ignored_layers"]


@pytest.mark.parametrize(("ignored", "message"), [
    (["layer1.0.bnn1"], r"no module 'layer1.0.bnn1'; did you mean 'layer1.0.bn1'\?"),
    (["relu"], r"'relu' is neither a BatchNorm, conv or linear"),
    ([3], r"pass module names"),
])
def test_bad_ignored_layers(resnet, ignored, message):
    with pytest.raises(ValueError, match=message):
        slimbench.plan(resnet, (3, 32, 32), ignored_layers=ignored)


def test_layer_ratios_override_one_layer(resnet):
    x = torch.randn(1, 3, 32, 32)
    plan = slimbench.plan(resnet, x, ratio=0.3, layer_ratios={"layer1.0.bn1": 0.75, "layer4.1.bn1": 0.0})
    rows = {r["bn"]: r for r in plan.summary()}
    assert rows["layer1.0.bn1"]["after"] == 16  # 64 channels, 75 % removed, whatever the gammas
    assert rows["layer4.1.bn1"]["after"] == 512
    assert plan.options["layer_ratios"] == {"layer1.0.bn1": 0.75, "layer4.1.bn1": 0.0}
    assert_equivalent(resnet, x, plan)


@pytest.mark.parametrize(("ratios", "message"), [
    ({"layer1.0.bn2": 0.5}, r"'layer1.0.bn2' has no channel this plan may prune: .*residual add"),
    ({"layer1.0.conv1": 0.5}, r"'layer1.0.conv1' is not a BatchNorm"),
    ({"layer1.0.bn1": 1.0}, r"layer_ratios\['layer1.0.bn1'\] must be in \[0, 1\)"),
    (["layer1.0.bn1"], r"layer_ratios must be a dict"),
])
def test_bad_layer_ratios(resnet, ratios, message):
    with pytest.raises(ValueError, match=message):
        slimbench.plan(resnet, (3, 32, 32), layer_ratios=ratios, residual="keep")


class WithEmptyLinear(nn.Module):
    """A linear with 0 outputs concatenated to a normal branch (left by an earlier pruning, say)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.empty = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(3, 0)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(torch.cat([self.bn(self.conv(x)).mean((2, 3)), self.empty(x.mean((2, 3)))], 1))


def test_zero_channel_space_is_no_numpy_error():
    model = randomize_bn(WithEmptyLinear())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimbench.plan(model, (3, 8, 8), ratio=0.5)  # was: numpy's "argmax of an empty sequence"
    assert all(int(m.sum()) >= 1 for m in plan.masks.values()) and plan.pruned_channels > 0
    assert_equivalent(model, torch.randn(1, 3, 8, 8), plan)


@pytest.mark.parametrize("ignored", [["block1.0.0"], ["block1"], ["block1.2"]])
def test_ignored_layers_keep_a_dead_branch(ignored):
    model = randomize_bn(PostActResidual(), seed=1)
    with torch.no_grad():
        model.block1[2].weight.mul_(1e-3)  # the branch's last BN is dead: branches="remove" drops it
    assert slimbench.plan(model, (3, 8, 8), ratio=0.3, branches="remove").branches == ["block1.2"]
    plan = slimbench.plan(model, (3, 8, 8), ratio=0.3, branches="remove", ignored_layers=ignored)
    assert plan.branches == []
    assert_equivalent(model, torch.randn(1, 3, 8, 8), plan)


def test_netslim_keyword_through_prune_says_what_was_meant(resnet):
    with pytest.raises(TypeError, match=r"unknown plan option 'prune_ratio'.*did you mean ratio\?"):
        slimbench.prune(resnet, (3, 32, 32), prune_ratio=0.3)
