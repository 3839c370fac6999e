"""profile(zero(model, plan)) == profile(prune(model, x, plan=plan)): MACs and live params, to the unit.

One model per family the pruning core supports (plain residual, inverted residual with depthwise
convs, dense concatenation, VGG, pre-activation with MaskedBatchNorm / ChannelSelection, a removed
residual branch). BN gammas are drawn at random so that plans cut unevenly across layers.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import slimbench
import thop_ext
from slimbench.models import get_model


def _random_gammas(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.01)
    return model.eval()


def _zeroed_and_pruned(model: nn.Module, shape: tuple[int, ...], **plan_options):
    plan = slimbench.plan(model, shape, **plan_options)
    return plan, slimbench.zero(model, plan), slimbench.prune(model, shape, plan=plan)


def _assert_equal_counts(model: nn.Module, zeroed: nn.Module, pruned: nn.Module, shape) -> None:
    full = thop_ext.profile(model, shape)
    zero_counts = thop_ext.profile(zeroed, shape)
    pruned_counts = thop_ext.profile(pruned, shape)
    assert zero_counts.macs == pruned_counts.macs
    assert zero_counts.params == pruned_counts.params
    assert pruned_counts.macs < full.macs and pruned_counts.params < full.params
    # live params of the pruned model are all of its params: nothing in it is zero any more
    assert pruned_counts.params == thop_ext.profile(pruned, shape, skip_zero=False).params
    # FLOPs: the zeroed model still runs elementwise ops (relu, adds, pooling) over dead channels
    assert pruned_counts.flops <= zero_counts.flops <= 1.02 * pruned_counts.flops


CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), (3, 64, 64), {}),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(weights=None), (3, 64, 64), {}),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None), (3, 64, 64), {}),
    "cifar_resnet20_shared": (lambda: get_model("resnet20"), (3, 32, 32), {"residual": "shared"}),
    "cifar_vgg19": (lambda: get_model("vgg19"), (3, 32, 32), {"ratio": 0.7}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_zeroed_counts_equal_pruned_counts(name):
    build, shape, options = CASES[name]
    model = _random_gammas(build())
    _plan, zeroed, pruned = _zeroed_and_pruned(model, shape, **options)
    _assert_equal_counts(model, zeroed, pruned, shape)


@pytest.mark.parametrize("name", ["resnet164", "densenet40"])
def test_zeroed_equals_pruned_with_masked_batchnorm(name):
    model = _random_gammas(get_model(name))
    _plan, zeroed, pruned = _zeroed_and_pruned(model, (3, 32, 32), ratio=0.5, residual="select")
    masked = [m for m in pruned.modules() if isinstance(m, slimbench.MaskedBatchNorm)]
    assert masked, "residual='select' on a pre-activation model should insert MaskedBatchNorm"
    _assert_equal_counts(model, zeroed, pruned, (3, 32, 32))
    # a MaskedBatchNorm counts its kept channels only, and is named as the BN it replaced
    counts = thop_ext.profile(pruned, (3, 32, 32))
    bn = masked[0]
    name_of = {m: n for n, m in pruned.named_modules()}
    row = counts.layer(name_of[bn])
    assert row.params == 2 * bn.num_features < 2 * bn.in_channels
    assert row.output_shape[1] == bn.num_features


def test_removed_residual_branch_counts_zero_when_zeroed():
    model = _random_gammas(get_model("resnet20"))
    with torch.no_grad():
        model.layer2[1].bn2.weight.fill_(1e-4)  # the branch's last BN falls under any threshold
    plan, zeroed, pruned = _zeroed_and_pruned(model, (3, 32, 32), ratio=0.3, branches="remove")
    assert plan.branches == ["layer2.1.bn2"]
    _assert_equal_counts(model, zeroed, pruned, (3, 32, 32))
    branch = [r for r in thop_ext.profile(zeroed, (3, 32, 32)).layers
              if r.name.startswith(("layer2.1.conv", "layer2.1.bn"))]
    assert len(branch) == 4 and all(r.macs == 0 and r.params == 0 for r in branch)
