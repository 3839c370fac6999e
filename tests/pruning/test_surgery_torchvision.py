"""The equivalence contract and a real MACs cut on torchvision's CNN families (ratio 0.5, random gamma)."""

import pytest
import torch
import torchvision

import slimbench

from helpers import assert_equivalent, conv_linear_macs, randomize_bn

MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg16_bn", "densenet121",
    "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5",
    "mnasnet0_5", "googlenet",
]


def build(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return randomize_bn(getattr(torchvision.models, name)(weights=None, **kwargs))


@pytest.mark.parametrize("name", MODELS)
def test_prune_half_is_exact_and_cheaper(name):
    model = build(name)
    x = torch.randn(2, 3, 64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = slimbench.plan(model, x, ratio=0.5)
    pruned = slimbench.prune(model, x, plan=plan)
    assert type(pruned) is type(model)
    assert_equivalent(model, x, plan, pruned)  # float32: 1e-4 of the largest output
    assert_equivalent(model.double(), x.double(), plan, pruned.double())  # float64: 1e-9, i.e. exact
    model.float(), pruned.float()
    macs_before, macs_after = conv_linear_macs(model, x[:1]), conv_linear_macs(pruned, x[:1])
    assert macs_after < 0.9 * macs_before
    # the plan's own MACs prediction is what torch's FlopCounterMode measures on the result
    assert (plan.macs_before, plan.macs_after) == (macs_before, macs_after)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k].to(before[k].dtype)) for k in before), "caller's model changed"
