"""Random plans and option values thrown at plan / prune / zero / zero_bn_channels: whatever is wrong
with them, only slimbench's own errors (or a TypeError for a wrong type) come out, never a numpy
IndexError, a KeyError or an internal ValueError."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slimbench
from slimbench.core.errors import SlimbenchError
from slimbench.pruning.plan import PruningPlan

from helpers import randomize_bn
from nets import DenseConcat, PostActResidual

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
MODELS = {"post": randomize_bn(PostActResidual(), seed=3), "dense": randomize_bn(DenseConcat(), seed=3)}
GRAPHS = {k: slimbench.analyze(m, X) for k, m in MODELS.items()}
BNS = {k: [n for n, m in mod.named_modules() if isinstance(m, torch.nn.BatchNorm2d)] for k, mod in MODELS.items()}

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 2000),
                    st.floats(0, 1).map(np.float32), st.floats(0, 1).map(torch.tensor), st.none(),
                    st.booleans(), st.text(max_size=3), st.just([0.5]))


def _allowed(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except (SlimbenchError, TypeError):
            return None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(sorted(MODELS)), ratio=numbers, target=numbers, round_to=numbers,
       residual=st.sampled_from(["keep", "shared", "select", "nope", 3]),
       branches=st.sampled_from(["keep", "remove", None]), method=st.sampled_from(
           ["network_slimming", "uniform", "optimal_thresholding", "x"]),
       layer=st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["c1", "b1.1", "b1"])))
def test_random_options_give_slimbench_errors_only(which, ratio, target, round_to, residual, branches, method,
                                                   layer):
    options = {"ratio": ratio, "target_macs": target, "round_to": round_to, "residual": residual,
               "branches": branches, "method": method}
    if layer is not None:
        options["ignored_layers" if len(layer) % 2 else "layer_ratios"] = [layer] if len(layer) % 2 else {layer: ratio}
    options = {k: v for k, v in options.items() if v is not None}
    plan = _allowed(lambda: slimbench.plan(MODELS[which], X, **options))
    if plan is not None:
        _allowed(lambda: slimbench.prune(MODELS[which], X, plan=plan))


@st.composite
def plans(draw):
    which = draw(st.sampled_from(sorted(MODELS)))
    good = GRAPHS[which].plan(ratio=0.5)
    names = BNS[which] + ["nope", ""]
    masks = {}
    for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
        size = draw(st.integers(0, 20))
        masks[name] = torch.tensor(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=torch.bool)
    if draw(st.booleans()):
        masks = {**good.masks, **masks}
    plan = PruningPlan(
        masks=masks, method=draw(st.sampled_from(["network_slimming", "??"])), ratio=draw(st.sampled_from([0.5, None])),
        input_shapes=draw(st.sampled_from([good.input_shapes, [[1, 3, 8, 8]], [[1, 3, 16, 16]], [[3, 8]], []])),
        options=draw(st.sampled_from([good.options, {}, {"residual": "shared"}, {"residual": "bogus"}])),
        branches=draw(st.lists(st.sampled_from(names), max_size=2)),
        selectors=draw(st.lists(st.sampled_from(names), max_size=2)))
    return which, plan


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=plans(), entry=st.sampled_from(["prune", "zero", "zero_bn_channels", "analysis", "plain"]))
def test_random_plans_give_slimbench_errors_only(case, entry):
    which, plan = case
    model = MODELS[which]
    calls = {"prune": lambda: slimbench.prune(model, X, plan=plan),
             "plain": lambda: slimbench.prune(model, plan=plan),
             "zero": lambda: slimbench.zero(model, plan),
             "zero_bn_channels": lambda: slimbench.zero_bn_channels(model, plan),
             "analysis": lambda: GRAPHS[which].prune(plan)}
    _allowed(calls[entry])


def test_a_plan_for_another_model_is_a_slimbench_error():
    plan = GRAPHS["dense"].plan(ratio=0.5)
    with pytest.raises(SlimbenchError):
        slimbench.zero_bn_channels(MODELS["post"], plan)
