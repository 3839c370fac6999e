"""Criteria on known gamma: the numbers can be checked by hand."""

import numpy as np
import pytest
import torch
import torchvision

import slimbench
from slimbench.pruning.criteria import (
    CRITERIA,
    METHODS,
    global_threshold,
    network_slimming,
    optimal_thresholding,
    register_criterion,
    uniform,
)

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


# -- the registry ---------------------------------------------------------------------------------

@pytest.fixture
def registered():
    """Criteria registered by a test are removed after it."""
    before = dict(CRITERIA)
    yield
    for name in set(CRITERIA) - set(before):
        del CRITERIA[name], METHODS[name]


def keep_top(importance, candidates, layers, ratio=None, keep=None):
    """Per layer: keep the ``keep`` most important candidates (ratio used when keep is None)."""
    prune = np.zeros(len(importance), dtype=bool)
    for layer in layers:
        cand = layer[candidates[layer]]
        n = keep if keep is not None else len(cand) - int(np.floor(ratio * len(cand)))
        prune[cand[np.argsort(-importance[cand], kind="stable")[n:]]] = True
    return prune


def test_registered_criterion_with_its_own_option(registered):
    register_criterion("keep_top", keep_top, sets_amount=("keep",))
    assert "keep_top" in METHODS and CRITERIA["keep_top"].options == ("keep",)
    model = randomize_bn(LoopOverChildren())
    plan = slimbench.plan(model, (3, 16, 16), method="keep_top", keep=3)
    assert [r["after"] for r in plan.summary()] == [3, 3, 3] and plan.options["keep"] == 3
    assert plan.method == "keep_top"
    by_ratio = slimbench.plan(model, (3, 16, 16), method="keep_top", ratio=0.5)
    assert [r["after"] for r in by_ratio.summary()] == [4, 8, 4]
    with pytest.raises(ValueError, match=r"keep=3 decides how much keep_top prunes"):
        slimbench.plan(model, (3, 16, 16), method="keep_top", keep=3, ratio=0.5)
    with pytest.raises(ValueError, match=r"criterion 'keep_top' has no option 'delta' \(its options: keep\)"):
        slimbench.plan(model, (3, 16, 16), method="keep_top", delta=0.1)


def test_registry_errors(registered):
    register_criterion("keep_top", keep_top)
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_criterion("keep_top", keep_top)
    register_criterion("keep_top", keep_top, replace=True)
    with pytest.raises(ValueError, match="sets_amount names 'delta', which fn does not take"):
        register_criterion("other", keep_top, sets_amount=("delta",))
    with pytest.raises(ValueError, match=r"unknown method 'l1'; choose one of network_slimming.*keep_top"):
        slimbench.plan(LoopOverChildren(), (3, 16, 16), method="l1")
    with pytest.raises(ValueError, match=r"branches='remove' .* 'keep_top' does not have; use it with "
                                         r"method='network_slimming'"):
        slimbench.plan(LoopOverChildren(), (3, 16, 16), method="keep_top", branches="remove")


def test_criterion_with_wrong_output_is_refused(registered):
    register_criterion("broken", lambda importance, candidates, layers, ratio: np.zeros(3, bool))
    with pytest.raises(ValueError, match=r"criterion 'broken' returned \(3,\), expected one bool per class"):
        slimbench.plan(randomize_bn(LoopOverChildren()), (3, 16, 16), method="broken")


def test_network_slimming_takes_no_options():
    assert CRITERIA["network_slimming"].options == () and CRITERIA["optimal_thresholding"].options == ("delta",)
