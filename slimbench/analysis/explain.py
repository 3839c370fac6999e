"""What a user asks of the channel graph: which BatchNorms can be pruned, and why the others cannot."""

from __future__ import annotations

import numpy as np
from torch import nn

from slimbench.analysis.graph import DEFAULT_RESIDUAL, ChannelGraph, build_graph
from slimbench.core.inputs import ExampleInputs

__all__ = ["explain", "explain_graph", "format_explanation", "prunable_bn_names"]


def explain(model: nn.Module, example_inputs: ExampleInputs, *, residual: str = DEFAULT_RESIDUAL,
            plan=None) -> list[dict]:
    """One row per BatchNorm: can its channels be pruned, and if not, why.

    ``plan``: a plan that ``prune`` verified (``pruned.slimbench_plan``); BNs whose channels the
    self-check had to keep are then shown as "frozen by verification", with the reason.
    """
    return explain_graph(build_graph(model, example_inputs, residual=residual), plan=plan)


def explain_graph(graph: ChannelGraph, *, plan=None) -> list[dict]:
    """``explain`` on a channel graph already traced (``slimbench.analyze`` keeps one): no tracing."""
    residual = graph.options.get("residual", DEFAULT_RESIDUAL)
    frozen = {bn: f["reason"] for f in (plan.options.get("verification") or {}).get("frozen", [])
              for bn in f["bns"]} if plan is not None else {}
    rows = []
    for name, rec in graph.bns.items():
        classes = np.unique(graph.class_of[rec.gids])
        why = graph.bn_class_reason(name)
        coupled = sorted({other for other, r in graph.bns.items() if other != name
                          and np.intersect1d(graph.class_of[r.gids], classes).size})
        if why is None and graph.class_residual[classes].any():
            status = "coupled (residual)" if residual != "shared" else "prunable (shared)"
            if residual == "keep":
                why = "joined by a residual add; residual='shared' prunes it with one shared importance"
        else:
            status = "prunable" if why is None else "not prunable"
        if rec.selector:
            status = "prunable (channel selection)"
        if why is None:
            why = _called_again(graph, classes)
        if name in frozen:
            status, why = "frozen by verification", f"pruning it changed the outputs: {frozen[name]}"
        rows.append({"bn": name, "channels": len(rec.gids), "status": status,
                     "coupled_with": ", ".join(coupled[:4]) + (" ..." if len(coupled) > 4 else ""),
                     "reason": why or ""})
    return rows


def _called_again(graph, classes: np.ndarray) -> str | None:
    """Modules called more than once whose channels meet these classes: their call sites go together."""
    records = [(r.name, r.calls, [r.gids]) for r in graph.bns.values()]
    records += [(r.name, r.calls, [r.in_gids, r.out_gids]) for r in graph.convs.values()]
    names = [f"{name} is called {calls} times in one forward" for name, calls, arrays in records
             if calls > 1 and any(a is not None and np.intersect1d(graph.class_of[a], classes).size for a in arrays)]
    return "; ".join(names) + ": every call site is pruned together" if names else None


def format_explanation(rows: list[dict]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers="keys", tablefmt="github")


def prunable_bn_names(model: nn.Module, example_inputs: ExampleInputs, *,
                      residual: str = DEFAULT_RESIDUAL) -> list[str]:
    """BatchNorms with at least one channel that pruning (with this residual mode) may remove."""
    graph = build_graph(model, example_inputs, residual=residual)
    allowed = graph.prunable_classes()
    if residual == "keep":
        allowed &= ~graph.class_residual
    return [name for name, rec in graph.bns.items() if allowed[graph.class_of[rec.gids]].any()]
