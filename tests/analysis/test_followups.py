"""Public entry points of the analysis (explain on a kept graph, the extension registries exported);
the official network-slimming ``channel_selection`` recognised where its forward is proven."""

import copy

import pytest
import torch

import slimbench
import slimbench.analysis.explain as explain_module
from slimbench.analysis.handlers import register_op_handler
from slimbench.core.rules import register_module_rule

from helpers import randomize_bn
from nets import PostActResidual
from user_nets import SelectPreResNet, channel_selection

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def test_analysis_explain_does_not_trace_again(monkeypatch):
    model = randomize_bn(PostActResidual(), seed=1)
    g = slimbench.analyze(model, X)
    expected = slimbench.explain(model, X)

    def no_tracing(*args, **kwargs):
        raise AssertionError("explain traced the model again")

    monkeypatch.setattr(explain_module, "build_graph", no_tracing)
    assert g.explain() == expected
    pruned = g.prune(g.plan(ratio=0.5))
    assert g.explain(pruned.slimbench_plan) == expected  # nothing frozen: the same rows


def test_extension_registries_are_public():
    assert slimbench.register_module_rule is register_module_rule
    assert slimbench.register_op_handler is register_op_handler
    assert {"register_module_rule", "register_op_handler", "explain_graph"} <= set(slimbench.__all__)


def _without_selection(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model)
    for name, module in list(twin.named_modules()):
        if isinstance(module, channel_selection):
            parent, _, leaf = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, leaf, torch.nn.Identity())
    return twin


@pytest.mark.parametrize("residual", ["keep", "shared", "select"])
def test_official_channel_selection_prunes_like_our_preresnet(residual):
    model = randomize_bn(SelectPreResNet(), seed=2)
    ours = _without_selection(model)
    plan = slimbench.plan(model, X, ratio=0.5, residual=residual)
    expected = slimbench.plan(ours, X, ratio=0.5, residual=residual)
    assert {k: v.tolist() for k, v in plan.masks.items()} == {k: v.tolist() for k, v in expected.masks.items()}
    assert plan.macs_after == expected.macs_after < plan.macs_before
    pruned = slimbench.prune(model, X, plan=plan)
    assert pruned.slimbench_plan.options["verification"]["frozen"] == []
    for module in pruned.modules():  # indexes sliced with the channels the selection reads
        if isinstance(module, channel_selection):
            assert bool((module.indexes == 1).all())
    assert model.select.indexes.numel() == 8  # the caller's model untouched


class NotASelection(torch.nn.Module):
    """A 0/1 parameter named ``indexes`` but a forward that scales: not a channel selection."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.indexes = torch.nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * (self.indexes.sum() / self.indexes.numel()) + x[:, :1]


def test_channel_selection_is_recognised_only_where_proven():
    model = randomize_bn(SelectPreResNet(), seed=2)
    with torch.no_grad():
        model.select.indexes[0] = 0  # already pruned: selects 7 of 8, not the identity
    model.fc = torch.nn.Linear(7, 10)
    rows = {r["bn"]: r for r in slimbench.explain(model, X, residual="shared")}
    assert "already selects 7 of 8 channels" in rows["bn"]["reason"]
    faker = SelectPreResNet()
    faker.layers[0].select = NotASelection(8)
    rows = {r["bn"]: r for r in slimbench.explain(randomize_bn(faker, seed=2), X, residual="shared")}
    assert "not x[:, nonzero(indexes)]" in rows["layers.0.bn1"]["reason"]


@pytest.mark.parametrize("name", ["densenet40", "resnet164"])
def test_masked_batchnorms_of_a_pruned_model_are_pruned_again(name):
    from slimbench.core.modules import MaskedBatchNorm
    from slimbench.models import get_model

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = slimbench.prune(randomize_bn(get_model(name), seed=1), x, ratio=0.3, residual="select")
    randomize_bn(first, seed=2)
    before = {n: (m.in_channels, m.num_features) for n, m in first.named_modules() if isinstance(m, MaskedBatchNorm)}
    assert before
    rows = {r["bn"]: r for r in slimbench.explain(first, x, residual="select")}
    assert all(rows[n]["status"] == "prunable (channel selection)" for n in before)
    second = slimbench.prune(first, x, ratio=0.3, residual="select")
    assert second.slimbench_plan.options["verification"]["frozen"] == []
    after = {n: (m.in_channels, m.num_features) for n, m in second.named_modules() if isinstance(m, MaskedBatchNorm)}
    assert sum(f for _, f in after.values()) < sum(f for _, f in before.values())
    assert all(after[n][0] == before[n][0] for n in before)  # in select mode the tensors they read stay


class SiameseConv(torch.nn.Module):
    """One conv applied to two different tensors whose sum is normalised by two BNs."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.bn0 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.c3, self.bn3 = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8)
        self.shared = torch.nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1, self.bn2 = torch.nn.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Conv2d(8, 16, 1, bias=False)
        self.bn4 = torch.nn.BatchNorm2d(16)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        a = torch.relu(self.bn0(self.c0(x)))
        b = torch.relu(self.bn3(self.c3(a)))
        y = torch.relu(self.bn1(self.shared(a)) + self.bn2(self.shared(b)))
        return self.fc(torch.relu(self.bn4(self.head(y))).mean((2, 3)))


def test_a_conv_called_on_two_tensors_couples_its_call_sites_and_the_rest_prunes():
    model = randomize_bn(SiameseConv(), seed=1)
    rows = {r["bn"]: r for r in slimbench.explain(model, X)}
    assert "shared is called 2 times in one forward" in rows["bn0"]["reason"]
    pruned = slimbench.prune(model, X, ratio=0.5, residual="shared")
    record = pruned.slimbench_plan.options["verification"]
    assert record["frozen"] == [] and record["max_rel_err"] <= 1e-9
    assert pruned.shared.in_channels < 8 and pruned.bn4.num_features < 16
