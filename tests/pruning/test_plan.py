"""PruningPlan as data, budgets, rounding, and clear errors for bad options."""

import json

import pytest
import torch
import torchvision

import slimbench
from slimbench import PruningPlan

from helpers import assert_equivalent, conv_linear_macs, randomize_bn
from nets import LoopOverChildren


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
        slimbench.plan(resnet, (3, 32, 32), target_macs=0.01)


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
