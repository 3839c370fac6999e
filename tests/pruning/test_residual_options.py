"""Every residual option and every criterion, on residual and concat models; branch removal."""

import pytest
import torch
from torch import fx

import slimbench
from slimbench.core.modules import MaskedBatchNorm

from helpers import assert_equivalent, conv_linear_macs, randomize_bn
from nets import DenseConcat, PostActResidual, PreActResidual

METHODS = ["network_slimming", "optimal_thresholding", "uniform"]
MODELS = {"post-act residual": PostActResidual, "pre-act residual": PreActResidual, "concat": DenseConcat}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("residual", ["keep", "shared", "select"])
@pytest.mark.parametrize("family", list(MODELS))
def test_every_option_is_exact(family, residual, method):
    model = randomize_bn(MODELS[family](), seed=3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model.double()
    plan = slimbench.plan(model, x, method=method, ratio=0.5, residual=residual)
    assert plan.masks, "nothing pruned"
    pruned = slimbench.prune(model, x, plan=plan)
    assert_equivalent(model, x, plan, pruned)
    assert conv_linear_macs(pruned, x) < conv_linear_macs(model, x)
    if residual == "select" and family != "post-act residual":
        assert plan.selectors and any(isinstance(m, MaskedBatchNorm) for m in pruned.modules())


def test_shared_prunes_residual_groups_together():
    model = randomize_bn(PostActResidual())
    x = torch.randn(1, 3, 8, 8)
    kept = slimbench.plan(model, x, ratio=0.5, residual="keep")
    shared = slimbench.plan(model, x, ratio=0.5, residual="shared")
    assert "block1.2" not in kept.masks and "stem.1" not in kept.masks
    assert torch.equal(shared.masks["stem.1"], shared.masks["block1.2"])  # one decision per coupled channel
    assert shared.macs_after < kept.macs_after


def test_selection_selects_before_the_bn():
    model = randomize_bn(PreActResidual())
    x = torch.randn(1, 3, 8, 8)
    plan = slimbench.plan(model, x, ratio=0.5, residual="select")
    pruned = slimbench.prune(model, x, plan=plan)
    bn = pruned.blocks[1][0]
    assert isinstance(bn, MaskedBatchNorm)
    assert bn.num_features == int(plan.masks["blocks.1.0"].sum()) < bn.in_channels == 8
    assert pruned.blocks[1][2].in_channels == bn.num_features
    assert pruned.stem.out_channels == 8  # the residual stream itself is untouched


def make_branch_dead(model, bn_name):
    bn = model.get_submodule(bn_name)
    with torch.no_grad():
        bn.weight.mul_(1e-3)
    return model


@pytest.mark.parametrize("residual", ["keep", "shared"])
@pytest.mark.parametrize("remove", [True, False])
def test_branch_removal(remove, residual):
    model = make_branch_dead(randomize_bn(PostActResidual(), seed=1), "block1.2")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model.double()
    plan = slimbench.plan(model, x, ratio=0.3, branches="remove", residual=residual)
    assert plan.branches == ["block1.2"]
    assert not plan.masks["block1.0.1"].any() and not plan.masks["block1.2"].any()
    pruned = slimbench.prune(model, x, plan=plan, remove_branches=remove)
    assert_equivalent(model, x, plan, pruned)
    names = dict(pruned.named_modules())
    if remove:
        assert isinstance(pruned, fx.GraphModule)
        assert not any(n.startswith("block1") for n in names), "branch modules must be gone"
    else:
        assert type(pruned) is PostActResidual
        assert all(not p.any() for p in pruned.block1.parameters())
    assert plan.macs_after == conv_linear_macs(pruned, x[:1]) if remove else True
    assert conv_linear_macs(pruned, x[:1]) < conv_linear_macs(model, x[:1])


def test_branch_removal_on_torchvision_resnet():
    import torchvision

    model = randomize_bn(torchvision.models.resnet18())
    make_branch_dead(model, "layer2.1.bn2")
    x = torch.randn(1, 3, 32, 32)
    plan = slimbench.plan(model, x, ratio=0.4, branches="remove")
    assert "layer2.1.bn2" in plan.branches
    pruned = slimbench.prune(model, x, plan=plan)
    assert "layer2.1.conv1" not in dict(pruned.named_modules())
    assert_equivalent(model, x, plan, pruned)
    assert plan.macs_after == conv_linear_macs(pruned, x)


def test_zero_matches_pruned_outputs_and_keeps_shapes():
    model = randomize_bn(DenseConcat())
    x = torch.randn(2, 3, 8, 8)
    plan = slimbench.plan(model, x, ratio=0.5, residual="select")
    zeroed = slimbench.zero(model, plan)
    assert {k: v.shape for k, v in zeroed.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert_equivalent(model, x, plan, zeroed)


def test_branch_removal_on_preactivation_blocks_that_end_in_a_conv():
    model = make_branch_dead(randomize_bn(PreActResidual(), seed=2), "blocks.1.3")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model.double()
    plan = slimbench.plan(model, x, ratio=0.3, branches="remove")
    assert plan.branches == ["blocks.1.3"]
    pruned = slimbench.prune(model, x, plan=plan)
    assert not any(n.startswith("blocks.1") for n, _ in pruned.named_modules())
    assert_equivalent(model, x, plan, pruned)
    assert plan.macs_after == conv_linear_macs(pruned, x[:1])


@pytest.mark.parametrize(("family", "dead"), [("post-act residual", "block1.0.1"), ("pre-act residual", "blocks.0.0")])
def test_remove_any_drops_a_branch_whose_inner_bn_is_empty(family, dead):
    model = make_branch_dead(randomize_bn(MODELS[family](), seed=4), dead)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    model.double()
    last_only = slimbench.plan(model, x, ratio=0.3, branches="remove")
    any_bn = slimbench.plan(model, x, ratio=0.3, branches="remove-any")
    assert last_only.branches == [] and len(any_bn.branches) == 1
    branch = any_bn.branches[0]
    assert not any_bn.masks[dead].any() and not any_bn.masks[branch].any()  # the whole branch is zeroed
    pruned = slimbench.prune(model, x, plan=any_bn)
    assert_equivalent(model, x, any_bn, pruned)
    assert any_bn.macs_after < last_only.macs_after


def test_remove_any_needs_a_threshold():
    with pytest.raises(ValueError, match="branches='remove-any' compares a branch's importance"):
        slimbench.plan(PostActResidual(), (3, 8, 8), method="uniform", ratio=0.3, branches="remove-any")
