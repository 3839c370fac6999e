"""slimbench: network-slimming channel pruning for torch 2.x, with honest FLOPs and latency.

Pipeline: trace (graph) -> plan (criteria, plan) -> prune (surgery) -> profile (thop_ext)
-> measure (latency) -> report.
"""

from .modules import ChannelSelection, MaskedBatchNorm
from .sparsity import update_bn, update_bn_by_names, update_prunable_bn

__version__ = "0.1.0"

__all__ = [
    "ChannelSelection",
    "MaskedBatchNorm",
    "update_bn",
    "update_bn_by_names",
    "update_prunable_bn",
]
