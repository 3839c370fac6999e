"""An explicit analysis: trace a model once, then explain, plan, prune and zero without tracing again.

    g = slimbench.analyze(model, (3, 224, 224))
    print(slimbench.format_explanation(g.explain()))
    plan = g.plan(ratio=0.5)               # pure data (JSON); g keeps the traced graph, the plan does not
    pruned = g.prune(plan)                 # as slimbench.prune(model, plan=plan), without re-tracing
    zeroed = g.zero(plan)

The analysis holds the model by reference and reads its weights when planning and pruning (so
gammas updated by training in between are used); it never modifies it. One channel graph is kept
per residual mode: ``g.plan(residual="shared")`` traces once more and keeps that graph too.
"""

from __future__ import annotations

from torch import Tensor, nn

from slimbench.analysis.explain import explain_graph
from slimbench.analysis.graph import DEFAULT_RESIDUAL, ChannelGraph, build_graph
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import ExampleInputs, as_example_inputs
from slimbench.pruning.options import RESIDUAL_MODES, wants_latency_model
from slimbench.pruning.plan import PruningPlan, make_plan
from slimbench.pruning.surgery import prune, zero, zero_bn_channels

__all__ = ["Analysis", "analyze"]


class Analysis:
    """A model and its channel graph(s) for fixed example inputs; see the module docstring."""

    def __init__(self, model: nn.Module, example_inputs: ExampleInputs, *, residual: str = DEFAULT_RESIDUAL,
                 leaf_modules=()) -> None:
        if residual not in RESIDUAL_MODES:
            raise SlimbenchValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        self.model = model
        self.example_inputs: tuple[Tensor, ...] = as_example_inputs(example_inputs)
        self.residual = residual
        self.leaf_modules = tuple(leaf_modules)
        self._graphs: dict[str, ChannelGraph] = {}
        self.graph(residual)

    def __repr__(self) -> str:
        return (f"Analysis({type(self.model).__name__}, inputs={self.input_shapes}, residual={self.residual!r}, "
                f"bns={len(self.graph().bns)})")

    @property
    def input_shapes(self) -> list[list[int]]:
        return [list(t.shape) for t in self.example_inputs]

    def graph(self, residual: str | None = None) -> ChannelGraph:
        """The channel graph for ``residual`` (default: the analysis's mode), traced on first use."""
        residual = self.residual if residual is None else residual
        if residual not in RESIDUAL_MODES:
            raise SlimbenchValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        if residual not in self._graphs:
            self._graphs[residual] = build_graph(self.model, self.example_inputs, residual=residual,
                                                 leaf_modules=self.leaf_modules)
        return self._graphs[residual]

    def explain(self, plan: PruningPlan | None = None) -> list[dict]:
        """One row per BatchNorm: prunable or not, and why (``slimbench.format_explanation`` prints it);
        ``plan``: a verified plan (``pruned.slimbench_plan``) whose frozen groups are shown. No tracing."""
        return explain_graph(self.graph(), plan=plan)

    def plan(self, **options) -> PruningPlan:
        """``slimbench.plan`` on this model and inputs, on the kept graph (same options)."""
        if "leaf_modules" in options:
            raise SlimbenchValueError("leaf_modules is fixed when the model is analysed; pass it to slimbench.analyze")
        residual = options.pop("residual", self.residual)
        if wants_latency_model(options):
            from slimbench.pruning.latency_model import resolve_latency

            options["residual"] = residual
            resolve_latency(self.model, self.example_inputs, options, self.prune, graph=self.graph(residual))
            del options["residual"]
        return make_plan(self.model, self.example_inputs, residual=residual, graph=self.graph(residual),
                         leaf_modules=self.leaf_modules, **options)

    def _graph_for(self, plan: PruningPlan) -> ChannelGraph:
        if not isinstance(plan, PruningPlan):
            raise TypeError(f"plan must be a PruningPlan (from .plan() or PruningPlan.from_json), got "
                            f"{type(plan).__name__}")
        ours = [s[1:] for s in self.input_shapes]
        theirs = [list(s)[1:] for s in plan.input_shapes]
        if ours != theirs:
            raise SlimbenchValueError(
                f"the plan was made for inputs of shape {plan.input_shapes}, this analysis traced "
                             f"{self.input_shapes}; analyze the model with those inputs, or use "
                             "slimbench.prune(model, plan=plan)")
        return self.graph(plan.options.get("residual", DEFAULT_RESIDUAL))

    def prune(self, plan: PruningPlan, *, remove_branches: bool = True, fold_beta: bool = False) -> nn.Module:
        """A new, physically smaller model (``slimbench.prune`` with this plan); the model is untouched."""
        return prune(self.model, self.example_inputs, plan=plan, remove_branches=remove_branches,
                     fold_beta=fold_beta, graph=self._graph_for(plan))

    def zero(self, plan: PruningPlan) -> nn.Module:
        """A copy with every weight the surgery would remove set to 0 (``slimbench.zero``)."""
        return zero(self.model, plan, graph=self._graph_for(plan))

    def zero_bn_channels(self, plan: PruningPlan) -> nn.Module:
        """The equivalence contract's reference: gamma = beta = 0 on the pruned channels."""
        self._graph_for(plan)
        return zero_bn_channels(self.model, plan)


def analyze(model: nn.Module, example_inputs: ExampleInputs, *, residual: str = DEFAULT_RESIDUAL,
            leaf_modules=()) -> Analysis:
    """Trace ``model`` once for ``example_inputs`` (a tensor, tuple of tensors or a shape such as
    (3, 32, 32)); the returned ``Analysis`` explains, plans, prunes and zeroes without re-tracing."""
    return Analysis(model, example_inputs, residual=residual, leaf_modules=leaf_modules)
