"""Cross-check with ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2 = conv + linear MACs).

Where the conventions agree (all weights counted, forward only, one op per module) the MACs are
equal on every torchvision CNN with BatchNorm and on the CIFAR models. ``DIFFERENCES`` lists
each place they differ and why; one test per entry shows it.
"""

from __future__ import annotations

import warnings

import torch
import torchvision
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.flop_counter import FlopCounterMode

import slimbench
import thop_ext
from slimbench.models import get_model

DIFFERENCES = {
    "zero weights": "thop_ext (skip_zero=True) skips all-zero (out, in) kernel slices; FlopCounterMode counts by "
                    "shape, so a zeroed model costs it as much as the dense one",
    "paper FLOPs": "thop_ext .flops = 2 x MACs + bias adds + elementwise ops (BN, activations, pooling, adds); "
                   "FlopCounterMode counts only matmul/conv-like ops, 2 per MAC, bias excluded",
    "backward": "FlopCounterMode also counts the backward pass when one runs under it; thop_ext counts one "
                "forward pass, under no_grad",
    "work inside a conv/linear subclass": "thop_ext counts a module with a rule by its weight and shapes only; "
                                          "extra tensor ops in a subclass's forward are not counted, "
                                          "FlopCounterMode counts every op",
}

# RegNet builders compute block widths with Tensor.tolist(), so they cannot be built on the meta
# device; these small ones are built for real (64x64 input). The larger RegNets use the same modules.
REAL_REGNETS = ("regnet_x_400mf", "regnet_y_400mf", "regnet_x_800mf", "regnet_y_800mf")


def _flop_counter_macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def test_every_torchvision_bn_cnn_agrees():
    """Built on the meta device (shapes only), at 224x224: every conv/linear MAC, compared exactly."""
    checked, mismatches = [], {}
    for name in torchvision.models.list_models(module=torchvision.models):
        if name.startswith("regnet"):
            continue
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore", FutureWarning)  # googlenet / inception init notices
            model = torchvision.models.get_model(name, weights=None).eval()
            x = torch.randn(1, 3, 224, 224)
        if not _has_bn(model):
            continue
        ours = thop_ext.profile(model, x, skip_zero=False)
        theirs = _flop_counter_macs(model, x)
        checked.append(name)
        if ours.macs != theirs:
            mismatches[name] = (ours.macs, theirs)
    assert not mismatches
    families = {"resnet50", "resnext50_32x4d", "wide_resnet50_2", "vgg16_bn", "densenet121", "mobilenet_v2",
                "mobilenet_v3_large", "mnasnet1_0", "shufflenet_v2_x1_0", "efficientnet_b0", "efficientnet_v2_s",
                "googlenet", "inception_v3", "maxvit_t"}
    assert families <= set(checked), sorted(families - set(checked))
    assert len(checked) >= 40


def test_regnets_agree():
    for name in REAL_REGNETS:
        model = torchvision.models.get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 64, 64)
        assert thop_ext.profile(model, x, skip_zero=False).macs == _flop_counter_macs(model, x), name


def test_cifar_models_agree():
    for name, options in (("resnet20", {}), ("resnet20", {"shortcut": "B"}), ("vgg19", {}),
                          ("densenet40", {}), ("resnet164", {})):
        with torch.device("meta"):
            model = get_model(name, **options).eval()
            x = torch.randn(2, 3, 32, 32)
        assert thop_ext.profile(model, x, skip_zero=False).macs == _flop_counter_macs(model, x), name


def test_pruned_model_with_masked_batchnorm_agrees():
    model = get_model("densenet40").eval()
    pruned = slimbench.prune(model, (3, 32, 32), ratio=0.5, residual="select")
    assert any(isinstance(m, slimbench.MaskedBatchNorm) for m in pruned.modules())
    x = torch.randn(1, 3, 32, 32)
    assert thop_ext.profile(pruned, x).macs == _flop_counter_macs(pruned, x)


# -- the places where they differ --------------------------------------------------------------------


def test_difference_zero_weights():
    assert "zero weights" in DIFFERENCES
    model = torchvision.models.resnet18(weights=None).eval()
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.5)
    zeroed = slimbench.zero(model, plan)
    x = torch.randn(1, 3, 32, 32)
    dense = _flop_counter_macs(model, x)
    assert _flop_counter_macs(zeroed, x) == dense
    assert thop_ext.profile(zeroed, x).macs < dense
    assert thop_ext.profile(zeroed, x, skip_zero=False).macs == dense


def test_difference_paper_flops():
    assert "paper FLOPs" in DIFFERENCES
    model = get_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    result = thop_ext.profile(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    elementwise = sum(r.flops - 2 * r.macs for r in result.layers)
    assert counter.get_total_flops() == 2 * result.macs
    assert result.flops == counter.get_total_flops() + elementwise
    assert elementwise > 0
    # resnet20 option A: BN 2/element, ReLU 1/element, residual add 1/element, avg pool, fc bias
    by_type = {}
    for row in result.layers:
        by_type[row.type] = by_type.get(row.type, 0) + row.flops - 2 * row.macs
    assert by_type["Linear"] == 10  # the bias adds
    assert set(by_type) >= {"BatchNorm2d", "BasicBlock"}


def test_difference_backward():
    assert "backward" in DIFFERENCES
    model = get_model("resnet20").train()
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    forward_macs = thop_ext.profile(model, x).macs
    assert counter.get_total_flops() // 2 > 2 * forward_macs
    assert model.training  # and profile left the mode alone


class ScaledConv(nn.Conv2d):
    """A conv subclass that does extra work after the convolution."""

    def forward(self, x):
        y = super().forward(x)
        return y @ torch.ones(y.shape[-1], y.shape[-1])


def test_difference_work_inside_conv_subclass():
    assert "work inside a conv/linear subclass" in DIFFERENCES
    model = ScaledConv(3, 4, 3, padding=1, bias=False).eval()
    x = torch.randn(1, 3, 8, 8)
    conv_macs = 4 * 3 * 9 * 64
    extra_matmul = 4 * 8 * 8 * 8
    assert thop_ext.profile(model, x).macs == conv_macs
    assert _flop_counter_macs(model, x) == conv_macs + extra_matmul
