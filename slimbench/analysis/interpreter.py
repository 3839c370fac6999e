"""Labelling every tensor's channels by running the traced graph on meta tensors.

:class:`ChannelInterpreter` is a ``torch.fx.Interpreter`` (as ``torch.fx.passes.shape_prop``):
each node runs on meta tensors (shapes only: no real forward, nothing in the model changes) and
then gets a label (``slimbench.core.labels``): which channel id (gid) sits at each position of
dim 1. Modules are labelled by their channel rule (``slimbench.core.rules``), functions and
methods by the op -> handler table (``handlers.py``). The interpreter also holds the union-find
over gids (channels that must go together), the frozen / unsafe gids with their reasons, and the
conv / BN / per-channel parameter records that surgery and planning read.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx
from torch.utils.flop_counter import FlopCounterMode

from slimbench.analysis import handlers, ops
from slimbench.analysis.params import check_params
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.labels import Chan, Full, Label, channel_codes, clear_z, gids, zbit
from slimbench.core.rule_base import ParamRecord
from slimbench.core.rules import BNRecord, ChannelRule, ConvRecord, meta_call, rule_for

__all__ = ["ChannelInterpreter", "label_graph"]

_OPAQUE = ChannelRule()


class _UserError(SlimbenchValueError):
    pass


class ChannelInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, select: bool) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.extra_traceback = False
        self.gm = gm
        self.select = select
        self.modules = dict(gm.named_modules())
        self.parent: list[int] = []
        self.space_of: list[int] = []
        self.spaces: list[tuple[str, str, int]] = []
        self.frozen: dict[int, str] = {}
        self.unsafe: dict[int, str] = {}
        self.residual: set[int] = set()
        self.convs: dict[str, ConvRecord] = {}
        self.bns: dict[str, BNRecord] = {}
        self.params: dict[str, ParamRecord] = {}  # per-channel parameters read by the forward (params.py)
        self.param_reads: set[tuple[fx.Node, fx.Node]] = set()  # (get_attr node, the op reading it per channel)
        self.labels: dict[fx.Node, Any] = {}
        self.merged: set[fx.Node] = set()  # nodes carrying a residual sum or a concat
        self.shapes: dict[fx.Node, tuple[Any, int]] = {}  # x.shape / x.size() nodes: (x's label, x.dim())
        self.counts: dict[fx.Node, Any] = {}  # channel counts that only size dim 1 of views: x's label
        self.count_checks: list[tuple[Any, Any, str]] = []  # (count's label, the view input's label, where)
        self.recorded: Counter[str] = Counter()  # calls of each module that its rule could follow
        self.inputs: tuple[Tensor, ...] = ()
        self._defaulted: set[str] = set()
        self.total_macs = 0  # conv + linear + matmul MACs of the whole forward (batch 1), as conv_linear_macs

    # -- running -------------------------------------------------------------------------------
    def label(self, inputs: tuple[Tensor, ...]) -> ChannelInterpreter:
        self.inputs = inputs
        self.env = {}
        # The meta run executes every conv, linear and matmul, so torch's counter sees the same ops as
        # core.counting.conv_linear_macs does on the real model; channel codes never reach those ops.
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self.run(*inputs, enable_io_processing=False)
        batch = inputs[0].shape[0] if inputs and inputs[0].dim() else 1
        self.total_macs = int(counter.get_total_flops()) // 2 // max(int(batch), 1)
        self._check_shared_modules()
        self._check_counts()
        check_params(self)
        return self

    def run_node(self, node: fx.Node) -> Any:
        try:
            value = super().run_node(node)
        except _UserError:
            raise
        except Exception as err:
            where = f"module {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
            shapes = [tuple(t.shape) for t in self.inputs]
            raise SlimbenchValueError(
                f"running the model on example_inputs of shape {shapes} failed at {where} "
                f"({type(err).__name__}: {err}). Pass inputs shaped like the model's real inputs, "
                "e.g. (3, 32, 32) for CIFAR models or (3, 224, 224) for ImageNet models."
            ) from err
        self.env[node] = value
        self.labels[node] = self._label(node, value)
        return value

    def placeholder(self, target, args, kwargs) -> Any:
        try:
            value = next(self.args_iter)
        except StopIteration:
            if args:  # has a default value
                self._defaulted.add(target)
                return args[0]
            raise _UserError(f"the model's forward takes argument {target!r}, but "
                             "example_inputs has fewer tensors") from None
        return value.to("meta")

    def get_attr(self, target, args, kwargs) -> Any:
        attr = self.fetch_attr(target)
        return attr.to("meta") if isinstance(attr, Tensor) else attr

    def call_module(self, target, args, kwargs) -> Any:
        return meta_call(self.modules[target], args, kwargs)

    def _label(self, node: fx.Node, value: Any) -> Any:
        if node.op == "placeholder":
            if node.target in self._defaulted or not isinstance(value, Tensor) or value.dim() < 2:
                return None
            return Chan(self.new_space(value.shape[1], "input", node.name, frozen="model input"))
        if node.op == "get_attr":
            return None
        if node.op == "output":
            self.freeze([self.labels.get(n) for n in node.all_input_nodes], "reaches a model output")
            return None
        try:
            if node.op == "call_module":
                module = self.modules[node.target]
                return (rule_for(module) or _OPAQUE).label(self, node, module, value)
            return handlers.label_call(self, node, value)
        except Exception as err:  # never guess: channels we fail to follow are frozen
            return self.opaque(node, value, f"{handlers.describe(node)}: channels not traceable ({err})")

    # -- what rules and handlers use -----------------------------------------------------------
    def input_label(self, node: fx.Node) -> Label | None:
        src = node.args[0] if node.args else None
        return self.labels.get(src) if isinstance(src, fx.Node) else None

    def concrete(self, node: fx.Node) -> tuple[Any, Any]:
        """The node's args and kwargs with traced nodes replaced by their (meta) values."""
        return (fx.node.map_arg(node.args, self.env.__getitem__),
                fx.node.map_arg(node.kwargs, self.env.__getitem__))

    def record_conv(self, node: fx.Node, rec: ConvRecord) -> None:
        """Record a conv / linear call; a module called again couples all its call sites."""
        self.recorded[rec.name] += 1
        prev = self.convs.setdefault(rec.name, rec)
        if prev is rec:
            return
        prev.calls += 1
        if prev.role != rec.role or prev.role == "fixed":
            self.freeze_gids([prev.in_gids, prev.out_gids, rec.in_gids, rec.out_gids], _called_again(rec.name))
            prev.fixed_macs += rec.fixed_macs
            return
        self.union_gids(prev.in_gids, rec.in_gids)  # one weight: one in-mask and one out-mask for every call
        self.union_gids(prev.out_gids, rec.out_gids)
        prev.per_position += rec.per_position  # MACs of every call

    def record_bn(self, node: fx.Node, rec: BNRecord) -> None:
        """Record a BN call; a BN called again joins the channels of all its call sites."""
        self.recorded[rec.name] += 1
        prev = self.bns.setdefault(rec.name, rec)
        if prev is rec:
            return
        prev.calls += 1
        if prev.selector or rec.selector:
            self.freeze_gids([prev.gids, prev.in_gids, rec.gids, rec.in_gids], _called_again(rec.name))
        else:
            self.union_gids(prev.gids, rec.gids)

    def _check_shared_modules(self) -> None:
        """A module called more than once, with a call its rule could not follow, is frozen whole."""
        calls = Counter(n.target for n in self.gm.graph.nodes if n.op == "call_module")
        for name, rec in (*self.convs.items(), *self.bns.items()):
            if calls[name] > self.recorded[name]:
                gids_ = ([rec.in_gids, rec.out_gids] if isinstance(rec, ConvRecord) else [rec.gids, rec.in_gids])
                self.freeze_gids(gids_, f"{name} is called {calls[name]} times in one forward and "
                                        "not every call's channels could be followed")

    def pointwise_label(self, node: fx.Node, value: Any, keeps_zero: bool) -> Any:
        if node.args[0] in self.merged:
            self.merged.add(node)
        label = self.input_label(node)
        return label if keeps_zero else clear_z(label)

    def reshape_label(self, node: fx.Node, value: Any, flatten: bool) -> Any:
        return handlers.reshape_label(self, node, value, flatten)

    def reads_shared(self, node: fx.Node) -> bool:
        """Is this tensor a residual sum / concat, or read by more than one op?"""
        return node in self.merged or len(node.users) > 1

    def private(self, node: fx.Node) -> bool:
        """Does this BN's output reach only conv/linear inputs, through pointwise ops?"""
        for user in node.users:
            if user.op == "call_module":
                module = self.modules[user.target]
                rule = rule_for(module) or _OPAQUE
                if rule.reads_all_channels(module):
                    continue
                if (rule.keeps_zero or rule.flattens) and self.private(user):
                    continue
            elif user.op in ("call_function", "call_method") and (
                    ops.pointwise_zero_preserving(user.target) or user.target in ops.FLATTENS
            ) and len(user.all_input_nodes) == 1 and self.private(user):
                continue
            return False
        return bool(node.users)

    def _check_counts(self) -> None:
        """A channel count read from x may only size a view of x's own channels (same classes)."""
        for count_label, label, where in self.count_checks:
            a, b = channel_codes(count_label), channel_codes(label)
            same = a is not None and b is not None and len(a) == len(b) and all(
                self.find(x) == self.find(y) for x, y in zip(gids(a).tolist(), gids(b).tolist(), strict=True))
            if not same:
                reason = f"{where}, whose channels are not the ones counted"
                self.freeze(count_label, reason)
                self.freeze(label, reason)

    # -- spaces and classes --------------------------------------------------------------------
    def new_space(self, size: int, kind: str, owner: str, z: bool = False, frozen: str | None = None) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + size))
        self.space_of.extend([len(self.spaces)] * size)
        self.spaces.append((kind, owner, size))
        if frozen:
            for g in range(start, start + size):
                self.frozen.setdefault(g, frozen)
        return torch.arange(start, start + size, dtype=torch.long) * 2 + int(z)

    def find(self, g: int) -> int:
        parent = self.parent
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    def union(self, a: Tensor, b: Tensor, residual: bool) -> None:
        for x, y in zip(gids(a).tolist(), gids(b).tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if residual:
                    self.residual.update((x, y))

    def union_gids(self, a, b) -> None:
        self.union(torch.as_tensor(a) * 2, torch.as_tensor(b) * 2, residual=False)

    def freeze_gids(self, arrays, reason: str) -> None:
        for array in arrays:
            if array is not None:
                for g in np.unique(array).tolist():
                    self.frozen.setdefault(g, reason)

    def freeze(self, label: Any, reason: str) -> None:
        for codes in _all_codes(label):
            for g in torch.unique(gids(codes)).tolist():
                self.frozen.setdefault(g, reason)

    def consume(self, codes: Tensor, by: str) -> None:
        """``by`` reads these channels: removing one is exact only if it is 0 when pruned."""
        live = codes[zbit(codes) == 0]
        for g in gids(live).tolist():
            self.unsafe.setdefault(g, f"{by} reads it where no BatchNorm zeroes it")

    def opaque(self, node: fx.Node, value: Any, reason: str) -> Any:
        """Freeze every input's channels; the output gets fresh, frozen channels."""
        for arg in node.all_input_nodes:
            lbl = self.labels.get(arg)
            if lbl is not None:
                self.freeze(lbl, reason)
        return self._fresh(value, node.name, reason)

    def _fresh(self, value: Any, owner: str, reason: str) -> Any:
        if isinstance(value, Tensor):
            return Chan(self.new_space(value.shape[1], "opaque", owner, frozen=reason)) if value.dim() >= 2 else None
        if isinstance(value, torch.Size):  # sizes carry no channels
            return None
        if isinstance(value, (tuple, list)):  # a plain tuple for tuple subclasses (namedtuples take *args)
            items = [self._fresh(v, owner, reason) for v in value]
            return items if isinstance(value, list) else tuple(items)
        return None


def _called_again(name: str) -> str:
    return f"{name} is called more than once in one forward, in ways that cannot be pruned together"


def _all_codes(label: Any):
    if isinstance(label, (Chan, Full)):
        yield label.codes
    elif isinstance(label, (tuple, list)):
        for item in label:
            yield from _all_codes(item)


def label_graph(gm: fx.GraphModule, inputs: tuple[Tensor, ...], select: bool) -> ChannelInterpreter:
    """Run ``gm`` on meta copies of ``inputs`` and label every node (see the module docstring)."""
    return ChannelInterpreter(gm, select).label(inputs)
