"""Residual branches that can be removed whole.

A branch is the part of the graph that only feeds one operand of a residual add and ends in a
BatchNorm, followed only by zero-preserving ops: pointwise ones, and convs / linears without a
bias (a pre-activation block ends BN → ReLU → conv). If that BN's channels are all pruned, the
branch contributes exactly 0 and the add can be replaced by its other operand. Removing a branch
zeroes all of its BNs in the reference model (``zero_bn_channels``), so a plan may also remove a
branch because *another* of its BNs is empty (``branches="remove-any"``, netslim's rule).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx, nn
from torch.nn.modules.conv import _ConvNd

from slimbench.analysis import ops
from slimbench.analysis.interpreter import ChannelInterpreter


@dataclass
class Branch:
    """A residual branch ending in ``bn`` whose removal leaves the add's other operand."""

    bn: str
    add_node: str
    operand: int
    nodes: frozenset[str]
    modules: frozenset[str]


def find_branches(builder: ChannelInterpreter) -> list[Branch]:
    graph = builder.gm.graph
    output = next(n for n in reversed(graph.nodes) if n.op == "output")

    def live_set(skip: tuple[fx.Node, int] | None) -> set[fx.Node]:
        live, stack = set(), [output]
        while stack:
            n = stack.pop()
            if n in live:
                continue
            live.add(n)
            inputs = n.all_input_nodes
            if skip is not None and n is skip[0]:
                inputs = [skip[0].args[1 - skip[1]]]
            stack.extend(inputs)
        return live

    base = live_set(None)
    module_users: dict[str, set[fx.Node]] = {}
    for n in graph.nodes:
        if n.op == "call_module":
            module_users.setdefault(n.target, set()).add(n)
    found = []
    for node in graph.nodes:
        kind = (ops.BINARY.get(node.target) if node.op == "call_function"
                else ops.BINARY_METHODS.get(node.target) if node.op == "call_method" else None)
        if kind != "sum" or node not in builder.merged or node not in base or len(node.args) < 2:
            continue
        for i in (0, 1):
            if i == 0 and node.target in ops.SUBTRACTIONS:
                continue
            if not all(isinstance(a, fx.Node) for a in node.args[:2]):
                continue
            bn = _branch_end(builder, node.args[i])
            if bn is None:
                continue
            dead = base - live_set((node, i)) - {node}
            names = {n.target for n in dead if n.op == "call_module"}
            if any(module_users[m] - dead for m in names if _has_state(builder.modules[m])):
                continue  # a module with weights is shared with code outside the branch
            found.append(Branch(bn, node.name, i, frozenset(n.name for n in dead), frozenset(names)))
    return found


def _linear_without_bias(module: nn.Module) -> bool:
    """A conv or linear layer maps zeros to zeros when it has no bias."""
    return isinstance(module, (_ConvNd, nn.Linear)) and module.bias is None


def _has_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _branch_end(builder: ChannelInterpreter, node: fx.Node) -> str | None:
    while True:
        if len(node.users) != 1:
            return None
        if node.op == "call_module":
            module = builder.modules[node.target]
            if node.target in builder.bns and not builder.bns[node.target].selector:
                return node.target
            if not (ops.pointwise_zero_preserving(module) or _linear_without_bias(module)):
                return None
        elif node.op in ("call_function", "call_method"):
            if not ops.pointwise_zero_preserving(node.target) or len(node.all_input_nodes) != 1:
                return None
        else:
            return None
        node = node.all_input_nodes[0]
