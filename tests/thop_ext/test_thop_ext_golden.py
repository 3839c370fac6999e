"""Golden numbers from ../shared/REFERENCE.md: params exact, MACs exact to the unit the table prints.

All weights counted (``skip_zero=False``): a freshly initialised model may hold a weight that is
exactly 0.0 (normal init yields one about every 2**24 draws), which live-weight counting would
rightly skip. Each model is profiled once, at the table's input size.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

import thop_ext
from slimbench.models import get_model

CIFAR = [  # name, dataset, builder options, MACs in millions (2 decimals), params
    ("resnet20", "cifar10", {}, 40.55, 269_722),
    ("resnet20", "cifar10", {"shortcut": "B"}, 40.81, 272_474),
    ("resnet56", "cifar10", {}, 125.49, 853_018),
    ("resnet56", "cifar10", {"shortcut": "B"}, 125.75, 855_770),
    ("resnet110", "cifar10", {}, 252.89, 1_727_962),
    ("vgg19", "cifar10", {}, 398.14, 20_035_018),
    ("vgg19", "cifar100", {}, 398.18, 20_081_188),
]

ILSVRC = [  # torchvision name, MACs in G (4 decimals), params
    ("resnet18", 1.8141, 11_689_512),
    ("resnet50", 4.0892, 25_557_032),
    ("vgg16_bn", 15.4703, 138_365_992),
    ("mobilenet_v2", 0.3008, 3_504_872),
    ("densenet121", 2.8342, 7_978_856),
]


@pytest.mark.parametrize(("name", "dataset", "options", "mmacs", "params"), CIFAR,
                         ids=[f"{n}-{d}-{''.join(o.values()) or 'A'}" for n, d, o, _, _ in CIFAR])
def test_cifar_golden(name, dataset, options, mmacs, params):
    result = thop_ext.profile(get_model(name, dataset, **options), (3, 32, 32), skip_zero=False)
    assert result.params == params
    assert round(result.macs / 1e6, 2) == mmacs
    assert thop_ext.human(result.macs) == f"{mmacs:.2f}M"


def test_densenet40_reference_approximations():
    """REFERENCE.md gives DenseNet-40 as approximate (≈264.8 M / ≈1.020 M; 24-channel stem ≈282.9 M / ≈1.059 M)."""
    for stem, mmacs, mparams in ((16, 264.8, 1.020), (24, 282.9, 1.059)):
        result = thop_ext.profile(get_model("densenet40", stem=stem), (3, 32, 32), skip_zero=False)
        assert round(result.macs / 1e6, 1) == mmacs
        assert round(result.params / 1e6, 3) == mparams


def test_paper_flops_of_vgg19_match_network_slimming_table():
    """Liu et al. 2017 report VGG-19 (C10) at 7.97e8 FLOPs: our paper-style .flops, to their 3 digits."""
    result = thop_ext.profile(get_model("vgg19"), (3, 32, 32), skip_zero=False)
    assert f"{result.flops:.2e}" == "7.97e+08"


@pytest.mark.parametrize(("name", "gmacs", "params"), ILSVRC, ids=[n for n, _, _ in ILSVRC])
def test_torchvision_golden(name, gmacs, params):
    model = torchvision.models.get_model(name, weights=None).eval()
    result = thop_ext.profile(model, torch.randn(1, 3, 224, 224), skip_zero=False)
    assert result.params == params == sum(p.numel() for p in model.parameters())
    assert round(result.macs / 1e9, 4) == gmacs
