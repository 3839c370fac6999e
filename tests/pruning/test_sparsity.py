"""update_bn: the L1 subgradient on gamma, where and only where asked."""

import pytest
import torch
from torch import nn

import slimbench

from nets import PostActResidual


def backward(model):
    model.zero_grad()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    return {n: m.weight.grad.clone() for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def test_update_bn_adds_s_sign_gamma():
    model = PostActResidual()
    with torch.no_grad():
        model.stem[1].weight[0] = -1.0
    base = backward(model)
    assert slimbench.update_bn(model, s=1e-2) == len(base)
    bn = model.stem[1]
    assert torch.allclose(bn.weight.grad, base["stem.1"] + 1e-2 * torch.sign(bn.weight))
    assert bn.weight.grad[0] == pytest.approx(base["stem.1"][0].item() - 1e-2)


def test_by_names_touches_only_those_and_accepts_dataparallel_prefix():
    model = PostActResidual()
    base = backward(model)
    wrapped = nn.DataParallel(model)
    assert slimbench.update_bn_by_names(wrapped, ["module.block1.0.1"], s=0.5) == 1
    assert not torch.equal(model.block1[0][1].weight.grad, base["block1.0.1"])
    assert torch.equal(model.stem[1].weight.grad, base["stem.1"])


def test_prunable_only_variant_skips_coupled_bns_when_residual_channels_are_kept():
    model = PostActResidual()
    base = backward(model)
    slimbench.update_prunable_bn(model, (3, 8, 8), s=0.5, residual="keep")
    assert not torch.equal(model.block1[0][1].weight.grad, base["block1.0.1"])  # interior: prunable
    assert torch.equal(model.stem[1].weight.grad, base["stem.1"])  # residual-coupled: skipped
    assert not hasattr(model, "_slimbench_prunable_bn")  # no residue on the model


def test_prunable_only_variant_follows_the_default_residual_mode():
    model = PostActResidual()
    base = backward(model)
    slimbench.update_prunable_bn(model, (3, 8, 8), s=0.5)  # default "shared": coupled groups are prunable
    assert not torch.equal(model.stem[1].weight.grad, base["stem.1"])


def test_skips_bn_without_grad_or_affine():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.BatchNorm2d(4))
    assert slimbench.update_bn(model, 1e-4) == 0  # no backward yet: no grads
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    assert slimbench.update_bn(model, 1e-4) == 1


def test_errors():
    model = PostActResidual()
    with pytest.raises(ValueError, match="non-negative"):
        slimbench.update_bn(model, s=-1e-4)
    with pytest.raises(KeyError, match=r"'stem\.2' is not a batch-norm module.*did you mean 'stem\.1'"):
        slimbench.update_bn_by_names(model, ["stem.2"], 1e-4)
    with pytest.raises(TypeError, match="collection of module names"):
        slimbench.update_bn_by_names(model, "stem.1", 1e-4)


def test_distributed_data_parallel_wrapper(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        model = PostActResidual()
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp(torch.randn(2, 3, 8, 8)).sum().backward()
        before = model.stem[1].weight.grad.clone()
        assert slimbench.update_bn_by_names(ddp, ["module.stem.1"], s=0.25) == 1
        assert torch.allclose(model.stem[1].weight.grad, before + 0.25 * torch.sign(model.stem[1].weight))
        assert slimbench.prunable_bn_names(ddp, (3, 8, 8)) == slimbench.prunable_bn_names(model, (3, 8, 8))
    finally:
        dist.destroy_process_group()
