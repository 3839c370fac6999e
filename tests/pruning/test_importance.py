"""Pluggable importance: by name from the registry or as a function fn(name, bn) -> scores."""

import numpy as np
import pytest
import torch

import slimbench
from slimbench.pruning.importance import IMPORTANCES, register_importance

from helpers import assert_equivalent, randomize_bn
from nets import LoopOverChildren


@pytest.fixture
def model():
    return randomize_bn(LoopOverChildren(), seed=2)


def test_default_is_mean_abs_gamma(model):
    assert slimbench.plan(model, (3, 16, 16)).to_dict()["masks"] == \
        slimbench.plan(model, (3, 16, 16), importance="gamma").to_dict()["masks"]
    assert slimbench.plan(model, (3, 16, 16)).options["importance"] == "gamma"


def test_bn_scale_ranks_by_gamma_over_std(model):
    with torch.no_grad():  # same gamma everywhere in layer a; running_var decides the ranking
        model.a[1].weight.fill_(0.5)
        model.a[1].running_var.copy_(torch.arange(1.0, 9.0))
    plan = slimbench.plan(model, (3, 16, 16), method="uniform", ratio=0.5, importance="bn_scale")
    assert plan.masks["a.1"].tolist() == [True] * 4 + [False] * 4  # the largest variances go
    assert plan.options["importance"] == "bn_scale"


def test_callable_importance_decides_and_is_recorded(model):
    def reversed_gamma(name, bn):
        return 1 - bn.weight.detach().abs()

    x = torch.randn(1, 3, 16, 16)
    plan = slimbench.plan(model, x, method="uniform", ratio=0.5, importance=reversed_gamma)
    gamma = model.a[1].weight.detach()
    assert set(np.flatnonzero(plan.masks["a.1"].numpy())) == set(torch.argsort(gamma)[:4].tolist())
    assert plan.options["importance"].endswith("reversed_gamma")
    assert_equivalent(model, x, plan)


def test_registered_importance_by_name(model):
    register_importance("channel_index", lambda name, bn: np.arange(bn.num_features, dtype=float))
    try:
        plan = slimbench.plan(model, (3, 16, 16), method="uniform", ratio=0.5, importance="channel_index")
        assert plan.masks["b.1"].tolist() == [False] * 8 + [True] * 8
        with pytest.raises(ValueError, match="already registered"):
            register_importance("channel_index", lambda name, bn: bn.weight)
    finally:
        del IMPORTANCES["channel_index"]


@pytest.mark.parametrize(("fn", "message"), [
    (lambda name, bn: torch.ones(3), r"gave 3 scores for 'a.1', which has 8 channels"),
    (lambda name, bn: -bn.weight, r"negative or non-finite score for 'a.1'"),
    (lambda name, bn: bn.weight / 0, r"negative or non-finite"),
])
def test_bad_importance_output(model, fn, message):
    with pytest.raises(ValueError, match=message):
        slimbench.plan(model, (3, 16, 16), importance=fn)
