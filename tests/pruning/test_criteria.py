"""Criteria on known gamma: the numbers can be checked by hand."""

import numpy as np
import pytest
import torch
import torchvision

import slimbench
from slimbench.pruning.criteria import global_threshold, network_slimming, optimal_thresholding, uniform

from helpers import randomize_bn
from nets import LoopOverChildren


def layers_of(sizes):
    edges = np.cumsum([0, *sizes])
    return [np.arange(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def test_network_slimming_uses_one_global_threshold():
    imp = np.array([0.9, 0.1, 0.8, 0.2, 0.05, 0.7])
    cand = np.ones(6, bool)
    prune = network_slimming(imp, cand, layers_of([3, 3]), ratio=0.5)
    assert prune.tolist() == [False, True, False, True, True, False]
    assert global_threshold(imp, cand, 0.5) == pytest.approx(0.2)


def test_uniform_prunes_same_fraction_per_layer():
    imp = np.array([0.9, 0.1, 0.8, 0.95, 0.05, 0.7, 0.6, 0.65])
    prune = uniform(imp, np.ones(8, bool), layers_of([4, 4]), ratio=0.5)
    assert prune.tolist() == [False, True, True, False, True, False, True, False]


def test_optimal_thresholding_prefix_rule_from_the_paper():
    # layer 1: squares 0.0001, 0.0004, 1, 1 -> prefix within delta=0.01 of total (2.0005) is 2 values
    imp = np.array([1.0, 0.01, 1.0, 0.02, 0.5, 0.5])
    prune = optimal_thresholding(imp, np.ones(6, bool), layers_of([4, 2]), delta=0.01)
    assert prune.tolist() == [False, True, False, True, False, False]


def test_optimal_thresholding_searches_delta_for_a_ratio():
    rng = np.random.default_rng(0)
    imp = rng.random(200)
    prune = optimal_thresholding(imp, np.ones(200, bool), layers_of([50] * 4), ratio=0.3)
    assert 0.25 <= prune.mean() <= 0.3


def test_candidates_only():
    imp = np.array([0.1, 0.2, 0.3, 0.4])
    cand = np.array([False, True, True, True])
    assert not network_slimming(imp, cand, layers_of([4]), ratio=0.5)[0]


@pytest.mark.parametrize("method", ["network_slimming", "optimal_thresholding", "uniform"])
def test_every_layer_keeps_a_channel_at_high_ratio(method):
    model = randomize_bn(LoopOverChildren())
    with torch.no_grad():
        model.b[1].weight.mul_(1e-4)  # the whole layer below any global threshold
    plan = slimbench.plan(model, (3, 16, 16), method=method, ratio=0.9)
    assert all(int(m.sum()) >= 1 for m in plan.masks.values())


def test_sparse_gamma_network_slimming_prunes_the_small_ones():
    model = randomize_bn(torchvision.models.resnet18())
    small = {}
    with torch.no_grad():
        for name in ("layer1.0.bn1", "layer3.1.bn1"):
            bn = model.get_submodule(name)
            bn.weight[: len(bn.weight) // 2] = 1e-4
            small[name] = len(bn.weight) // 2
    plan = slimbench.plan(model, (3, 32, 32), ratio=0.1)  # 192 of 1920 candidates; 160 are tiny
    for name, n in small.items():
        assert not plan.masks[name][:n].any()


def test_untrained_gamma_warns_that_the_ranking_is_arbitrary():
    with pytest.warns(UserWarning, match="same value"):
        slimbench.plan(LoopOverChildren(), (3, 16, 16), ratio=0.5)
