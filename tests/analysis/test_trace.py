"""Tracing the model code users write, without ever changing their model."""

import numpy as np
import pytest
import torch
from torch import nn

import slimbench
from slimbench.analysis.trace import TraceFailure, trace

from helpers import assert_equivalent, randomize_bn
from mutation import assert_unchanged, snapshot
from nets import cbr
from user_nets import SelectPreResNet, SlimVGG

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_module_built_inside_forward_is_traced_through_and_never_added():
    model = randomize_bn(SlimVGG(), seed=2)
    before = snapshot(model)
    gm, fallbacks = trace(model, inputs=(X,))
    assert fallbacks == [] and "avg_pool2d" in gm.code
    rows = slimbench.explain(model, X)
    plan = slimbench.plan(model, X, ratio=0.5)
    pruned = slimbench.prune(model, X, plan=plan)
    assert_unchanged(before, model, "trace / explain / plan / prune")
    assert not any(name.startswith("avgpool2d") for name, _ in model.named_modules())
    assert all(r["status"] == "prunable" for r in rows)
    assert_equivalent(model, X, plan, pruned)
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []


class ConstantInForward(nn.Module):
    """A tensor made inside forward (fx stores it as a constant) and shape-dependent control flow."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = cbr(3, 8), cbr(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        if x.shape[-1] != 8:
            raise ValueError("expects 8x8 inputs")
        y = self.a(x) * torch.tensor(2.0)
        return self.fc(self.b(y).mean((2, 3)))


def test_constants_made_while_tracing_stay_off_the_callers_model():
    model = randomize_bn(ConstantInForward(), seed=2)
    before = snapshot(model)
    plan = slimbench.plan(model, X, ratio=0.5)
    pruned = slimbench.prune(model, X, plan=plan)  # shape-specialised: a GraphModule with the constant
    assert_unchanged(before, model, "plan / prune")
    assert not hasattr(model, "_tensor_constant0")
    assert_equivalent(model, X, plan, pruned)


class ModuleWithParamsInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = cbr(3, 8)

    def forward(self, x):
        return nn.Conv2d(8, 4, 1)(self.a(x))


def test_module_with_parameters_built_inside_forward_is_a_clear_error():
    model = ModuleWithParamsInForward()
    before = snapshot(model)
    with pytest.raises(TraceFailure, match="builds a Conv2d with parameters inside its forward.*__init__"):
        slimbench.explain(model, X)
    assert_unchanged(before, model, "explain")


def test_numpy_channel_selection_is_a_recognised_leaf_and_everything_prunes():
    """The official channel_selection (numpy in forward) is a leaf proven to select by ``indexes``
    (tests/analysis/test_followups.py), not a fallback: no warning, and its channels stay prunable."""
    import warnings

    model = randomize_bn(SelectPreResNet(), seed=3)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*channel_selection")
        rows = {r["bn"]: r for r in slimbench.explain(model, X)}
        plan = slimbench.plan(model, X, ratio=0.5)
        pruned = slimbench.prune(model, X, plan=plan)
    assert rows["layers.0.bn2"]["status"] == "prunable"
    assert "opaque" not in rows["layers.0.bn1"]["reason"]
    assert_unchanged(before, model, "explain / plan / prune")
    assert pruned.layers[0].bn2.num_features < 6
    assert_equivalent(model, X, plan, pruned)


class NumpyScale(nn.Module):
    """numpy on a parameter inside forward: untraceable, an opaque leaf."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * float(np.mean(self.scale.detach().cpu().numpy()))


def test_no_cap_on_opaque_leaves():
    """A ResNet-164 in the official style has 55 numpy-using modules; 40 here, in one tracing pass."""
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *[NumpyScale(8) for _ in range(40)]))
    with pytest.warns(UserWarning, match="'40'"):
        _, fallbacks = trace(model, inputs=(X,))
    assert len(fallbacks) == 40


class NumpyCount(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return int(np.count_nonzero(self.gate.detach().numpy()))


class RootUsesOpaqueValue(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.count, self.fc = cbr(3, 8), NumpyCount(), nn.Linear(8, 2)

    def forward(self, x):
        if self.count(x) > 3:
            x = self.a(x)
        return self.fc(x.mean((2, 3)))


def test_error_names_the_first_real_cause_and_its_submodule():
    model = RootUsesOpaqueValue()
    before = snapshot(model)
    with pytest.raises(TraceFailure, match=r"submodule 'count' \(NumpyCount\).*RootUsesOpaqueValue then failed"):
        slimbench.plan(model, X)
    assert_unchanged(before, model, "plan (failing)")


class DataDependentRoot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = cbr(3, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:
            x = x * 2
        return self.fc(x.mean((2, 3)))


def test_failing_root_is_named_and_left_unchanged():
    model = DataDependentRoot().train()
    model.a.eval()
    before = snapshot(model)
    with pytest.raises(TraceFailure, match="forward of DataDependentRoot itself.*control flow"):
        slimbench.prune(model, X)
    assert_unchanged(before, model, "prune (failing)")


def test_torch_compiled_model_is_unwrapped():
    model = randomize_bn(SlimVGG(), seed=4)
    compiled = torch.compile(model)  # not run: unwrapping must not need dynamo to compile anything
    plan = slimbench.plan(compiled, X, ratio=0.5)
    pruned = slimbench.prune(compiled, X, plan=plan)
    assert type(pruned) is SlimVGG
    assert_equivalent(model, X, plan, pruned)


class BatchFlattens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc1, self.fc2 = cbr(3, 4), nn.Linear(4 * 64, 2), nn.Linear(4 * 64, 2)

    def forward(self, x):
        y = self.a(x)
        return self.fc1(y.view(y.size(0), -1)) + self.fc2(y.reshape(y.shape[0], -1))


def test_batch_flattens_are_traced_as_flatten():
    model = randomize_bn(BatchFlattens(), seed=5)
    gm, _ = trace(model, inputs=(X,))
    assert gm.code.count("torch.flatten") == 2 and ".view(" not in gm.code and "size" not in gm.code
    with torch.no_grad():
        assert torch.equal(gm(X), model(X))
    plan = slimbench.plan(model, X, ratio=0.5)
    assert_equivalent(model, X, plan, slimbench.prune(model, X, plan=plan))


class CachingBias(nn.Module):
    """A forward that caches a tensor in a dict on its module in eval mode (timm's attention biases)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = cbr(3, 8)
        self.bias = nn.Parameter(torch.zeros(8))
        self.cache: dict[str, torch.Tensor] = {}
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        if not self.training:
            if "bias" not in self.cache:
                self.cache["bias"] = self.bias.view(1, -1, 1, 1) * 2
            bias = self.cache["bias"]
        else:
            bias = self.bias.view(1, -1, 1, 1) * 2
        return self.head((self.body(x) + bias).mean((2, 3)))


def test_a_forward_that_caches_in_its_module_leaves_the_callers_cache_alone():
    import copy

    model = randomize_bn(CachingBias(), seed=0).eval()
    slimbench.plan(model, (3, 8, 8), ratio=0.5)
    assert model.cache == {}  # no traced Proxy stored in the caller's module
    copy.deepcopy(model)  # which broke deep copies (and so prune) of timm's efficientvit_m0 / tiny_vit
    pruned = slimbench.prune(model, (3, 8, 8), ratio=0.5)
    assert pruned(torch.randn(1, 3, 8, 8)).shape == (1, 4)


@torch.fx.wrap
def _spatial_size(x: torch.Tensor) -> torch.Size:
    return x.shape[2:]


class UnknownSizeOp(nn.Module):
    """An op slimbench has no rule for that returns a torch.Size (timm maxvit's window helpers)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(cbr(3, 8), cbr(8, 8))
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h, w = _spatial_size(x)  # the input's channels are frozen anyway; body's stay prunable
        return self.head(self.body(x).sum((2, 3)) / (h * w))


def test_an_unknown_op_returning_a_size_is_opaque_not_a_crash():
    model = randomize_bn(UnknownSizeOp(), seed=0).eval()
    pruned = slimbench.prune(model, (3, 8, 8), ratio=0.5)  # verified against the zeroed model
    assert pruned.slimbench_plan.macs_after < pruned.slimbench_plan.macs_before
