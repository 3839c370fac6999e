"""slimbench: network-slimming channel pruning for torch 2.x, with honest FLOPs and latency.

Pipeline: trace (trace, graph) -> plan (criteria, plan) -> prune (surgery) -> profile (thop_ext)
-> measure (latency) -> report.
"""

from .checkpoint import load_pruned_model, save_pruned_model
from .graph import explain, prunable_bn_names
from .modules import ChannelSelection, MaskedBatchNorm
from .plan import PruningPlan
from .sparsity import update_bn, update_bn_by_names, update_prunable_bn
from .surgery import plan, prune, zero, zero_bn_channels

__version__ = "0.1.0"

__all__ = [
    "ChannelSelection",
    "MaskedBatchNorm",
    "PruningPlan",
    "explain",
    "load_pruned_model",
    "save_pruned_model",
    "plan",
    "prunable_bn_names",
    "prune",
    "update_bn",
    "update_bn_by_names",
    "update_prunable_bn",
    "zero",
    "zero_bn_channels",
]
