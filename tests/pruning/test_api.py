"""slimbench.analyze: trace once, then explain / plan / prune / zero; plans are pure data."""

import dataclasses
import json

import pytest
import torch
import torchvision

import slimbench
import slimbench.analysis.graph as graph_module
from slimbench import PruningPlan
from slimbench.analysis.graph import DEFAULT_RESIDUAL

from helpers import assert_equivalent, randomize_bn
from nets import PreActResidual


@pytest.fixture
def traces(monkeypatch):
    """Counts the traces (the expensive step) that graph building makes."""
    calls = []
    real = graph_module.trace

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_module, "trace", counting)
    return calls


@pytest.fixture(scope="module")
def resnet():
    return randomize_bn(torchvision.models.resnet18())


def test_plan_once_prune_many_without_retracing(resnet, traces):
    x = torch.randn(1, 3, 32, 32)
    g = slimbench.analyze(resnet, x)
    assert isinstance(g, slimbench.Analysis) and len(traces) == 1
    plans = [g.plan(ratio=r) for r in (0.3, 0.5)] + [g.plan(target_macs=0.6, method="uniform")]
    pruned = [g.prune(p) for p in plans] + [g.prune(plans[0])]
    zeroed = g.zero(plans[1])
    assert len(traces) == 1
    for p, m in zip(plans + plans[:1], pruned, strict=True):
        assert_equivalent(resnet, x, p, m)
    assert_equivalent(resnet, x, plans[1], zeroed)
    other = "keep" if DEFAULT_RESIDUAL != "keep" else "shared"
    kept = g.plan(ratio=0.5, residual=other)  # another residual mode: one more trace, then kept
    g.prune(kept)
    g.plan(ratio=0.4, residual=other)
    assert len(traces) == 2


def test_analysis_matches_the_one_line_api(resnet):
    x = torch.randn(1, 3, 32, 32)
    g = slimbench.analyze(resnet, x)
    a, b = g.plan(ratio=0.5, round_to=4), slimbench.plan(resnet, x, ratio=0.5, round_to=4)
    assert a.to_json() == b.to_json()
    assert g.explain() == slimbench.explain(resnet, x)
    assert "Analysis(ResNet" in repr(g)


def test_one_line_prune_traces_once(resnet, traces):
    slimbench.prune(resnet, (3, 32, 32), ratio=0.5)
    assert len(traces) == 1


def test_plan_is_pure_data(resnet):
    plan = slimbench.plan(resnet, (3, 32, 32), ratio=0.5)
    assert not [f.name for f in dataclasses.fields(plan) if f.name.startswith("_")]
    data = {k: v for k, v in dataclasses.asdict(plan).items() if k != "masks"}
    json.dumps(data)  # everything but the masks (bool tensors) is plain JSON data
    again = PruningPlan.from_json(plan.to_json())
    assert again.to_json() == plan.to_json()


def test_plan_from_json_prunes_with_the_analysis(resnet):
    x = torch.randn(1, 3, 32, 32)
    g = slimbench.analyze(resnet, x)
    plan = PruningPlan.from_json(slimbench.plan(resnet, x, ratio=0.4).to_json())
    assert_equivalent(resnet, x, plan, g.prune(plan))


def test_selection_plans_and_gammas_updated_after_analysis():
    model = randomize_bn(PreActResidual()).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    g = slimbench.analyze(model, x, residual="select")
    first = g.plan(ratio=0.5)
    with torch.no_grad():  # training moves gammas; the analysis reads them at plan time
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 - m.weight)
    second = g.plan(ratio=0.5)
    assert first.to_dict()["masks"] != second.to_dict()["masks"]
    assert_equivalent(model, x, second, g.prune(second))


def test_analysis_errors(resnet):
    g = slimbench.analyze(resnet, (3, 32, 32))
    other = slimbench.plan(resnet, (3, 64, 64), ratio=0.5)
    with pytest.raises(ValueError, match=r"made for inputs of shape \[\[1, 3, 64, 64\]\].*analyze the model"):
        g.prune(other)
    with pytest.raises(TypeError, match="plan must be a PruningPlan"):
        g.prune({"masks": {}})
    with pytest.raises(ValueError, match="leaf_modules is fixed"):
        g.plan(leaf_modules=("layer1",))
    with pytest.raises(ValueError, match="residual must be one of"):
        slimbench.analyze(resnet, (3, 32, 32), residual="both")


def test_analysis_never_touches_the_model():
    model = randomize_bn(torchvision.models.resnet18()).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_modules()]
    g = slimbench.analyze(model, (3, 32, 32))
    plan = g.plan(ratio=0.5, branches="remove")
    g.prune(plan), g.zero(plan), g.zero_bn_channels(plan), g.explain()
    assert model.training and all(m.training for m in model.modules())
    assert [n for n, _ in model.named_modules()] == names
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
