"""slimbench: network-slimming channel pruning for torch 2.x, with honest FLOPs and latency.

Pipeline, one subpackage per stage: ``analysis`` (trace -> channel graph) -> ``pruning`` (criteria ->
plan -> surgery) -> ``thop_ext`` (profile) -> ``bench`` (measure -> report). The public API below is
loaded lazily (PEP 562), so ``import slimbench`` and ``slimbench --help`` do not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API: dict[str, str] = {
    "update_bn": "slimbench.pruning.sparsity",
    "update_bn_by_names": "slimbench.pruning.sparsity",
    "update_prunable_bn": "slimbench.pruning.sparsity",
    "explain": "slimbench.analysis.explain",
    "format_explanation": "slimbench.analysis.explain",
    "prunable_bn_names": "slimbench.analysis.explain",
    "PruningPlan": "slimbench.pruning.plan",
    "analyze": "slimbench.pruning.api",
    "Analysis": "slimbench.pruning.api",
    "register_criterion": "slimbench.pruning.criteria",
    "register_importance": "slimbench.pruning.importance",
    "plan": "slimbench.pruning.surgery",
    "prune": "slimbench.pruning.surgery",
    "zero": "slimbench.pruning.surgery",
    "zero_bn_channels": "slimbench.pruning.surgery",
    "load_pruned_model": "slimbench.pruning.checkpoint",
    "save_pruned_model": "slimbench.pruning.checkpoint",
    "register_module_rule": "slimbench.core.rules",
    "register_op_handler": "slimbench.analysis.handlers",
    "explain_graph": "slimbench.analysis.explain",
    "ChannelSelection": "slimbench.core.modules",
    "MaskedBatchNorm": "slimbench.core.modules",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'slimbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})

