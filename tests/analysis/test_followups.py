"""Public entry points of the analysis: explain on a kept graph; the extension registries exported."""

import torch

import slimbench
import slimbench.analysis.explain as explain_module
from slimbench.analysis.handlers import register_op_handler
from slimbench.core.rules import register_module_rule

from helpers import randomize_bn
from nets import PostActResidual

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
