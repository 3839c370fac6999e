"""Property test: on random CNN DAGs, pruning is exact and the MACs prediction is what torch counts."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import slimbench

from helpers import assert_equivalent, conv_linear_macs, randomize_bn
from mutation import assert_unchanged, snapshot

ACTS = {"relu": nn.ReLU, "silu": nn.SiLU, "none": nn.Identity}


class RandomNet(nn.Module):
    """Interprets a static spec, so torch.fx sees plain Python control flow."""

    def __init__(self, spec, head: str, size: int) -> None:
        super().__init__()
        self.spec, self.head = spec, head
        channels = [3]
        self.layers = nn.ModuleList()
        for op in spec:
            kind = op[0]
            if kind == "conv":
                _, src, cout, k, act = op
                self.layers.append(nn.Sequential(nn.Conv2d(channels[src], cout, k, padding=k // 2, bias=False),
                                                 nn.BatchNorm2d(cout), ACTS[act]()))
                channels.append(cout)
            elif kind == "dw":
                _, src, act = op
                c = channels[src]
                self.layers.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                                                 nn.BatchNorm2d(c), ACTS[act]()))
                channels.append(c)
            else:
                self.layers.append(nn.Identity())
                channels.append(channels[op[1]] + (channels[op[2]] if kind == "cat" else 0))
        flat = channels[-1] * (size * size if head == "flatten" else 1)
        self.fc = nn.Linear(flat, 4)

    def forward(self, x):
        values = [x]
        for op, layer in zip(self.spec, self.layers, strict=True):
            if op[0] in ("conv", "dw"):
                values.append(layer(values[op[1]]))
            elif op[0] == "add":
                values.append(values[op[1]] + values[op[2]])
            else:
                values.append(torch.cat([values[op[1]], values[op[2]]], 1))
        y = values[-1]
        y = torch.flatten(y, 1) if self.head == "flatten" else y.mean((2, 3))
        return self.fc(y)


@st.composite
def random_nets(draw):
    channels = [3]
    spec = []
    for _ in range(draw(st.integers(2, 7))):
        src = draw(st.integers(0, len(channels) - 1))
        kind = draw(st.sampled_from(["conv", "conv", "dw", "add", "cat"]))
        if kind == "conv" or src == 0 and kind != "add":
            op = ("conv", src, draw(st.integers(2, 6)), draw(st.sampled_from([1, 3])),
                  draw(st.sampled_from(list(ACTS))))
            channels.append(op[2])
        elif kind == "dw":
            op = ("dw", src, draw(st.sampled_from(list(ACTS))))
            channels.append(channels[src])
        else:
            same = [i for i in range(1, len(channels)) if channels[i] == channels[src]] if kind == "add" else []
            if kind == "add" and same and src:
                op = ("add", src, draw(st.sampled_from(same)))
                channels.append(channels[src])
            elif src:
                other = draw(st.integers(1, len(channels) - 1))
                op = ("cat", src, other)
                channels.append(channels[src] + channels[other])
            else:
                op = ("conv", 0, 4, 3, "relu")
                channels.append(4)
        spec.append(op)
    return spec, draw(st.sampled_from(["pool", "flatten"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=random_nets(), seed=st.integers(0, 2**16), ratio=st.sampled_from([0.3, 0.6]),
       residual=st.sampled_from(["keep", "shared", "select"]),
       method=st.sampled_from(["network_slimming", "optimal_thresholding", "uniform"]))
def test_random_dags_prune_exactly(net, seed, ratio, residual, method):
    spec, head = net
    model = randomize_bn(RandomNet(spec, head, size=5), seed=seed).double()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    plan = slimbench.plan(model, x, ratio=ratio, residual=residual, method=method)
    pruned = slimbench.prune(model, x, plan=plan)
    assert_equivalent(model, x, plan, pruned)
    assert_equivalent(model, x, plan, slimbench.zero(model, plan))
    assert plan.macs_before == conv_linear_macs(model, x[:1])
    assert plan.macs_after == conv_linear_macs(pruned, x[:1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(net=random_nets(), seed=st.integers(0, 2**16), residual=st.sampled_from(["keep", "shared", "select"]),
       modes=st.lists(st.booleans(), min_size=12, max_size=12))
def test_public_calls_never_mutate_the_callers_model(net, seed, residual, modes, tmp_path_factory):
    from thop_ext import profile

    spec, head = net
    model = randomize_bn(RandomNet(spec, head, size=5), seed=seed)
    for module, training in zip(model.modules(), modes, strict=False):  # mixed modes, as in a partly frozen model
        module.training = training
    model.layers[0].register_forward_hook(lambda m, i, o: None)
    x = torch.randn(2, 3, 5, 5)
    before = snapshot(model)
    rows = slimbench.explain(model, x, residual=residual)
    assert_unchanged(before, model, "explain")
    plan = slimbench.plan(model, x, ratio=0.5, residual=residual)
    assert_unchanged(before, model, "plan")
    pruned = slimbench.prune(model, x, plan=plan)
    assert_unchanged(before, model, "prune")
    slimbench.zero(model, plan)
    slimbench.zero_bn_channels(model, plan)
    assert_unchanged(before, model, "zero / zero_bn_channels")
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    slimbench.save_pruned_model(pruned, path, plan=pruned.slimbench_plan)
    slimbench.load_pruned_model(model, path)
    assert_unchanged(before, model, "load_pruned_model")
    profile(model, (3, 5, 5))
    profile(model, (3, 5, 5), skip_zero=False)
    assert_unchanged(before, model, "thop_ext.profile")
    assert rows


def test_failing_public_calls_leave_the_model_unchanged(tmp_path):
    """The failure paths: refused prune, another model's plan, a checkpoint of another model, bad inputs."""
    from slimbench.core.errors import SlimbenchError
    from thop_ext import profile

    from user_nets import RolledChannels, SlimVGG, roll_taken_for_pointwise

    x = torch.randn(2, 3, 8, 8)
    broken = randomize_bn(RolledChannels(only_broken=True), seed=1).train()
    broken.bn.eval()
    broken.c1.register_forward_pre_hook(lambda m, i: None)
    before = snapshot(broken)
    with roll_taken_for_pointwise(), pytest.raises(SlimbenchError, match="nothing of this plan can be kept"):
        slimbench.prune(broken, x, ratio=0.5)
    assert_unchanged(before, broken, "prune (refused)")
    vgg = randomize_bn(SlimVGG(), seed=1)
    vgg_plan = slimbench.plan(vgg, x, ratio=0.5)
    with pytest.raises(ValueError, match="feature.1"):
        slimbench.zero_bn_channels(broken, vgg_plan)
    with pytest.raises(ValueError):
        slimbench.zero(broken, vgg_plan)
    with pytest.raises(ValueError):
        slimbench.prune(broken, plan=vgg_plan)
    path = slimbench.save_pruned_model(slimbench.prune(vgg, plan=vgg_plan), tmp_path / "vgg.pt")
    with pytest.raises(ValueError):
        slimbench.load_pruned_model(broken, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever the error, the model must come back unchanged
        profile(broken, (3, 5))
    assert_unchanged(before, broken, "failing zero / zero_bn_channels / prune / load / profile")
