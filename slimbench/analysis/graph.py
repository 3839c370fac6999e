"""The channel graph: which conv / linear / BN channels must be removed together.

The model is traced (``trace.py``) and interpreted node by node on meta tensors
(``interpreter.py``), so no real forward runs and nothing in the model changes. Each tensor
carries labels (``slimbench.core.labels``) saying which channel of which *space* sits at each
position of dim 1. Spaces are created by conv / linear outputs (and model inputs, opaque ops);
module rules (``slimbench.core.rules``) and op handlers (``handlers.py``) move, join or freeze labels.
Channels joined through ``+`` (or a squeeze-excitation product, or a depthwise conv) fall into one
*class*: a class is removed whole or not at all. ``finalize`` turns all this into classes, the
groups of spaces that classes tie together, and the reason each class can or cannot be pruned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import fx, nn

from slimbench.analysis.branches import Branch, find_branches
from slimbench.analysis.interpreter import ChannelInterpreter, label_graph
from slimbench.analysis.trace import trace
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import ExampleInputs, as_example_inputs
from slimbench.core.rule_base import ParamRecord
from slimbench.core.rules import BNRecord, ConvRecord

RESIDUAL_MODES = ("keep", "shared", "select")
DEFAULT_RESIDUAL = "shared"  # docs/defaults.md measures the alternatives; every default reads this one name

__all__ = ["ChannelGraph", "ConvRecord", "BNRecord", "Branch", "build_graph"]


@dataclass
class ChannelGraph:
    gm: fx.GraphModule
    n_gids: int
    space_of: np.ndarray  # gid -> space index
    spaces: list[tuple[str, str, int]]  # (kind, owner, size)
    class_of: np.ndarray  # gid -> class index
    class_reason: list[str | None]  # None: prunable
    class_residual: np.ndarray  # bool per class: joined through a residual add
    convs: dict[str, ConvRecord]
    bns: dict[str, BNRecord]
    branches: list[Branch]
    options: dict = field(default_factory=dict)
    fallback_leaves: list[str] = field(default_factory=list)
    params: dict[str, ParamRecord] = field(default_factory=dict)  # per-channel parameters surgery slices
    unrecorded_macs: int = 0  # MACs of ops no record follows (opaque linears on tokens, attention): fixed

    @property
    def shape_specialised(self) -> bool:
        """Tracing needed concrete shapes: the forward's path depends on them."""
        return bool(self.gm.meta.get("slimbench_shape_specialised", False))

    @property
    def n_classes(self) -> int:
        return len(self.class_reason)

    def prunable_classes(self) -> np.ndarray:
        return np.array([r is None for r in self.class_reason], dtype=bool)

    def bn_class_reason(self, name: str) -> str | None:
        """None if some channel of this BN can be pruned, else why none can."""
        reasons = [self.class_reason[c] for c in np.unique(self.class_of[self.bns[name].gids])]
        if any(r is None for r in reasons):
            return None
        return reasons[0]

    def macs(self, keep: np.ndarray | None = None, removed: frozenset[str] = frozenset()) -> int:
        """Conv + linear (+ matmul) multiply-accumulates (batch 1) with channels kept where ``keep[gid]``;
        the ops no record follows count at their full, unchanged size."""
        keep = np.ones(self.n_gids, dtype=bool) if keep is None else keep
        total = self.unrecorded_macs
        for rec in self.convs.values():
            if rec.name in removed:
                continue
            if rec.role == "dense":
                total += int(keep[rec.out_gids].sum()) * int(keep[rec.in_gids].sum()) * rec.per_position
            elif rec.role == "joined":
                kept = int(keep[rec.out_gids].sum())
                per_group = 1 if rec.group_size == 1 else kept // rec.groups
                total += kept * per_group * rec.per_position
            elif rec.role == "grouped":
                total += int(keep[rec.out_gids].sum()) * (len(rec.in_gids) // rec.groups) * rec.per_position
            else:
                total += rec.fixed_macs
        return total


def build_graph(model: nn.Module, example_inputs: ExampleInputs, *, residual: str = DEFAULT_RESIDUAL,
                leaf_modules=()) -> ChannelGraph:
    """Trace ``model`` and compute its channel classes. The model is not modified."""
    inputs = as_example_inputs(example_inputs)
    gm, fallbacks = trace(model, leaf_modules, inputs)
    builder = label_graph(gm, inputs, select=residual == "select")
    if not builder.bns:
        raise SlimbenchValueError(f"{type(model).__name__} has no BatchNorm layer reached by its forward: network "
                         "slimming prunes channels by their BatchNorm scale factors, so there is nothing to prune")
    return _finalize(builder, fallbacks, residual)


def _finalize(b: ChannelInterpreter, fallbacks: list[str], residual: str) -> ChannelGraph:
    n = len(b.parent)
    roots = np.fromiter((b.find(g) for g in range(n)), dtype=np.int64, count=n)
    _, class_of = np.unique(roots, return_inverse=True)
    n_classes = int(class_of.max()) + 1 if n else 0
    reasons: list[str | None] = [None] * n_classes
    has_bn = np.zeros(n_classes, dtype=bool)
    for rec in b.bns.values():
        has_bn[class_of[rec.gids]] = True
    for g, why in b.unsafe.items():
        reasons[class_of[g]] = reasons[class_of[g]] or why
    for g, why in b.frozen.items():  # frozen wins over unsafe as the stated reason
        c = class_of[g]
        if reasons[c] is None or "reads it" in reasons[c]:
            reasons[c] = why
    for c in np.flatnonzero(~has_bn):
        reasons[c] = reasons[c] or "no BatchNorm scales these channels"
    class_residual = np.zeros(n_classes, dtype=bool)
    if b.residual:
        class_residual[class_of[np.fromiter(b.residual, dtype=np.int64)]] = True
    graph = ChannelGraph(
        gm=b.gm, n_gids=n, space_of=np.asarray(b.space_of, dtype=np.int64), spaces=b.spaces,
        class_of=class_of, class_reason=reasons, class_residual=class_residual, convs=b.convs,
        bns=b.bns, branches=find_branches(b), options={"residual": residual},
        fallback_leaves=fallbacks, params=b.params,
    )
    graph.unrecorded_macs = max(0, b.total_macs - graph.macs())
    return graph
