"""Replaying a traced model on meta tensors to label every tensor's channels.

Each node runs on meta tensors (shapes only: no real forward, nothing in the model changes) and
gets labels (``labels.py``): which channel of which *space* sits at each position of dim 1.
Spaces are created by conv / linear outputs (and model inputs, opaque ops); the op table in
``channel_ops.py`` says how each op moves, joins (union-find) or freezes channels.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from slimbench.analysis import ops
from slimbench.analysis.labels import Chan, Full, Label, as_full, channel_codes, collapse, gids, with_z, zbit
from slimbench.core.modules import ChannelSelection, MaskedBatchNorm


@dataclass
class ConvRecord:
    """A conv or linear module and how its channels map to spaces."""

    name: str
    role: str  # "dense": reads in_gids, creates out space | "joined": out = in (depthwise/grouped) | "fixed"
    in_gids: np.ndarray | None = None
    out_gids: np.ndarray | None = None
    group_size: int = 1  # channels per conv group for "joined"
    groups: int = 1
    per_position: int = 1  # kernel size x output spatial size (x 1 for linear)
    fixed_macs: int = 0


@dataclass
class BNRecord:
    name: str
    gids: np.ndarray  # the classes its channels belong to (its output space for a selector)
    selector: bool = False
    in_gids: np.ndarray | None = None  # selectors only: the channels it reads


class Builder:
    def __init__(self, gm: fx.GraphModule, select: bool) -> None:
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
        self.labels: dict[fx.Node, object] = {}
        self.values: dict[fx.Node, object] = {}
        self.merged: set[fx.Node] = set()
        self.links: list[tuple[np.ndarray, np.ndarray]] = []  # selector out gid -> in gid

    # -- spaces and classes -------------------------------------------------------------------
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

    def freeze(self, label, reason: str) -> None:
        for codes in self._all_codes(label):
            for g in torch.unique(gids(codes)).tolist():
                self.frozen.setdefault(g, reason)

    def consume(self, codes: Tensor, by: str) -> None:
        """``by`` reads these channels: removing one is exact only if it is 0 when pruned."""
        live = codes[zbit(codes) == 0]
        for g in gids(live).tolist():
            self.unsafe.setdefault(g, f"{by} reads it where no BatchNorm zeroes it")

    def _all_codes(self, label):
        if isinstance(label, (Chan, Full)):
            yield label.codes
        elif isinstance(label, (tuple, list)):
            for item in label:
                yield from self._all_codes(item)

    # -- replay --------------------------------------------------------------------------------
    def run(self, inputs: tuple[Tensor, ...]) -> None:
        placeholders = iter(inputs)
        for node in self.gm.graph.nodes:
            try:
                self.step(node, placeholders)
            except _UserError:
                raise
            except Exception as err:
                where = f"module {node.target!r}" if node.op == "call_module" else f"node {node.name!r}"
                shapes = [tuple(t.shape) for t in inputs]
                raise ValueError(
                    f"running the model on example_inputs of shape {shapes} failed at {where} "
                    f"({type(err).__name__}: {err}). Pass inputs shaped like the model's real inputs, "
                    "e.g. (3, 32, 32) for CIFAR models or (3, 224, 224) for ImageNet models."
                ) from err

    def step(self, node: fx.Node, placeholders) -> None:
        if node.op == "placeholder":
            try:
                value = next(placeholders).to("meta")
            except StopIteration:
                if node.args:  # has a default value
                    self.values[node], self.labels[node] = node.args[0], None
                    return
                raise _UserError(f"the model's forward takes argument {node.target!r}, but "
                                 "example_inputs has fewer tensors") from None
            self.values[node] = value
            self.labels[node] = (Chan(self.new_space(value.shape[1], "input", node.name,
                                                     frozen="model input"))
                                 if value.dim() >= 2 else None)
            return
        if node.op == "get_attr":
            attr = self.gm
            for part in node.target.split("."):
                attr = getattr(attr, part)
            self.values[node] = attr.to("meta") if isinstance(attr, Tensor) else attr
            self.labels[node] = None
            return
        if node.op == "output":
            self.freeze([self.labels.get(n) for n in node.all_input_nodes], "reaches a model output")
            return
        args = fx.node.map_arg(node.args, self.values.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, self.values.__getitem__)
        if node.op == "call_module":
            module = self.modules[node.target]
            value = meta_call(module, args, kwargs)
        else:
            fn = getattr(args[0], node.target) if node.op == "call_method" else node.target
            call_args = args[1:] if node.op == "call_method" else args
            value = fn(*call_args, **kwargs)
        self.values[node] = value
        try:
            self.labels[node] = (self.module_label(node, module, value) if node.op == "call_module"
                                 else self.function_label(node, value))
        except Exception as err:  # never guess: channels we fail to follow are frozen
            self.labels[node] = self.opaque(node, value, f"{_describe(node)}: channels not traceable ({err})")

    # -- modules -------------------------------------------------------------------------------
    def module_label(self, node: fx.Node, module: nn.Module, value):
        src = node.args[0] if node.args else None
        label = self.labels.get(src) if isinstance(src, fx.Node) else None
        codes = channel_codes(label)
        name = node.target
        if isinstance(module, (MaskedBatchNorm, ChannelSelection)):
            return self.opaque(node, value, f"{name} is an already-pruned {type(module).__name__}")
        if isinstance(module, _ConvNd) and not module.transposed and codes is not None:
            return self.conv_label(name, module, codes, value)
        if isinstance(module, nn.Linear) and value.dim() == 2 and codes is not None:
            self.consume(codes, name)
            out = self.new_space(module.out_features, "linear", name)
            self.convs[name] = ConvRecord(name, "dense", gids(codes).numpy(), gids(out).numpy())
            return Chan(out)
        if isinstance(module, _BatchNorm) and codes is not None:
            if self.select and (src in self.merged or len(src.users) > 1) and self.private(node):
                self.consume(codes, name)
                out = self.new_space(module.num_features, "selector", name, z=True)
                self.bns[name] = BNRecord(name, gids(out).numpy(), True, gids(codes).numpy())
                return Chan(out)
            self.bns[name] = BNRecord(name, gids(codes).numpy())
            return Chan(with_z(codes, True))
        if isinstance(module, nn.Flatten):
            return self.reshape_label(node, [label], value, flatten=True)
        keeps_zero = ops.pointwise_zero_preserving(module)
        if keeps_zero is not None and label is not None:
            if src in self.merged:
                self.merged.add(node)
            return label if keeps_zero else _clear_z(label)
        return self.opaque(node, value, f"{name} ({type(module).__name__}) is opaque to slimbench")

    def conv_label(self, name: str, conv: _ConvNd, codes: Tensor, value: Tensor):
        per_position = math.prod(conv.kernel_size) * math.prod(value.shape[2:])
        g, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        if g == 1:
            self.consume(codes, name)
            out = self.new_space(cout, "conv", name)
            self.convs[name] = ConvRecord(name, "dense", gids(codes).numpy(), gids(out).numpy(),
                                          per_position=per_position)
            return Chan(out)
        if cin == cout:  # depthwise, or grouped with as many outputs as inputs per group
            out = with_z(codes, zbit(codes).bool() & (conv.bias is None))
            self.convs[name] = ConvRecord(name, "joined", gids(codes).numpy(), gids(codes).numpy(),
                                          group_size=cin // g, groups=g, per_position=per_position)
            return Chan(out)
        reason = f"{name} is a grouped conv with {cout // g} outputs per {cin // g} inputs"
        self.freeze(Chan(codes), reason)
        self.convs[name] = ConvRecord(name, "fixed", fixed_macs=cout * (cin // g) * per_position)
        return Chan(self.new_space(cout, "opaque", name, frozen=reason))

    def private(self, node: fx.Node) -> bool:
        """Does this BN's output reach only conv/linear inputs, through pointwise ops?"""
        for user in node.users:
            if user.op == "call_module":
                module = self.modules[user.target]
                if isinstance(module, nn.Linear) or (isinstance(module, _ConvNd) and module.groups == 1):
                    continue
                if (ops.pointwise_zero_preserving(module) or isinstance(module, nn.Flatten)) and self.private(user):
                    continue
            elif user.op in ("call_function", "call_method") and (
                    ops.pointwise_zero_preserving(user.target) or user.target in ops.FLATTENS
            ) and len(user.all_input_nodes) == 1 and self.private(user):
                continue
            return False
        return bool(node.users)

    # -- functions and methods -------------------------------------------------------------------
    def function_label(self, node: fx.Node, value):
        target = node.target
        arg_labels = [self.labels.get(a) if isinstance(a, fx.Node) else None for a in node.args]
        if node.op == "call_method" and target in ops.SHAPE_METHODS:
            return None
        if node.op == "call_function" and target is getattr:
            return None
        if not isinstance(value, (Tensor, tuple, list)):
            return None
        keeps_zero = ops.pointwise_zero_preserving(target)
        if keeps_zero is not None and arg_labels and arg_labels[0] is not None and isinstance(value, Tensor):
            if node.args[0] in self.merged:
                self.merged.add(node)
            return arg_labels[0] if keeps_zero else _clear_z(arg_labels[0])
        kind = ops.BINARY.get(target) if node.op == "call_function" else ops.BINARY_METHODS.get(target)
        if kind and isinstance(value, Tensor):
            return self.binary_label(node, kind, value)
        if node.op == "call_function" and target in ops.CAT:
            return self.cat_label(node, value)
        if node.op == "call_function" and target is operator.getitem and isinstance(
                arg_labels[0] if arg_labels else None, (tuple, list)):
            return arg_labels[0][node.args[1]]
        is_reshape = target in ops.RESHAPE_METHODS if node.op == "call_method" else target in ops.RESHAPE_FUNCTIONS
        if is_reshape and arg_labels and arg_labels[0] is not None:
            return self.reshape_label(node, arg_labels, value, flatten=target in ops.FLATTENS)
        if target in ops.PAD_FUNCTIONS and arg_labels and arg_labels[0] is not None:
            return self.pad_label(node, arg_labels[0], value)
        is_reduce = target in ops.REDUCE_METHODS if node.op == "call_method" else target in ops.REDUCE_FUNCTIONS
        if is_reduce and arg_labels and arg_labels[0] is not None:
            return self.reduce_label(node, arg_labels[0], value)
        return self.opaque(node, value, f"{_describe(node)} is not an op slimbench maps channels through")

    def binary_label(self, node: fx.Node, kind: str, value: Tensor):
        a, b = (node.args + (None,))[:2] if len(node.args) >= 2 else (node.args[0], node.kwargs.get("other"))
        la = self.labels.get(a) if isinstance(a, fx.Node) else None
        lb = self.labels.get(b) if isinstance(b, fx.Node) else None
        va = self.values.get(a) if isinstance(a, fx.Node) else a
        vb = self.values.get(b) if isinstance(b, fx.Node) else b
        ca, cb = channel_codes(la), channel_codes(lb)
        if value.dim() < 2:
            return self.opaque(node, value, f"{_describe(node)} on tensors without channels")
        channels = value.shape[1]
        if ca is not None and cb is not None and va.dim() == vb.dim() and len(ca) == len(cb) == channels:
            self.union(ca, cb, residual=kind == "sum")
            if kind == "sum":
                z = zbit(ca).bool() & zbit(cb).bool()
                self.merged.add(node)
            elif kind == "product":
                z = zbit(ca).bool() | zbit(cb).bool()
            else:
                z = zbit(ca).bool()
            return Chan(with_z(ca, z))
        # one side carries the channels; the other is a constant, a scalar or broadcast over channels
        for other, codes, other_label, is_left in ((vb, ca, lb, True), (va, cb, la, False)):
            if codes is None or len(codes) != channels:
                continue
            other_channels = _channel_extent(other, value.dim())
            if other_channels > 1:
                continue
            if other_label is not None:
                self.freeze(other_label, f"{_describe(node)} broadcasts it over all channels")
            if kind == "product":
                z = zbit(codes).bool() | (zbit(channel_codes(other_label)).bool()
                                         if channel_codes(other_label) is not None else False)
                return Chan(with_z(codes, z))
            if kind == "quotient" and is_left:
                return Chan(codes)
            return Chan(with_z(codes, False))
        return self.opaque(node, value, f"{_describe(node)} combines tensors whose channels do not line up")

    def cat_label(self, node: fx.Node, value: Tensor):
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = dim + value.dim() if dim < 0 else dim
        labels = [self.labels.get(t) for t in tensors]
        if any(lbl is None for lbl in labels):
            return self.opaque(node, value, f"{_describe(node)} concatenates an unlabelled tensor")
        if dim == 1:
            codes = [channel_codes(lbl) for lbl in labels]
            self.merged.add(node)
            if all(c is not None for c in codes):
                return Chan(torch.cat(codes))
            fulls = [as_full(lbl, self.values[t].shape) for lbl, t in zip(labels, tensors, strict=True)]
            return collapse(torch.cat(fulls, 1))
        codes = [channel_codes(lbl) for lbl in labels]
        if dim != 0 and all(c is not None and len(c) == len(codes[0]) for c in codes):
            for c in codes[1:]:
                self.union(codes[0], c, residual=False)
            z = torch.stack([zbit(c).bool() for c in codes]).all(0)
            return Chan(with_z(codes[0], z))
        return self.opaque(node, value, f"{_describe(node)} concatenates along dim {dim}")

    def reshape_label(self, node: fx.Node, arg_labels, value, flatten: bool):
        src = node.args[0]
        shape = self.values[src].shape
        full = as_full(arg_labels[0], shape)
        args, kwargs = self.concrete(node)

        def replay(codes: Tensor):
            if node.op == "call_module":
                return self.modules[node.target](codes)
            if node.op == "call_method":
                return getattr(codes, node.target)(*args[1:], **kwargs)
            return node.target(codes, *args[1:], **kwargs)

        try:
            out = replay(full)
        except RuntimeError:  # a view of the broadcast labels can need real strides
            out = replay(full.contiguous())
        in_codes = channel_codes(arg_labels[0])
        if isinstance(out, Tensor):
            label = collapse(out)
            out_codes = channel_codes(label)
            same = (in_codes is not None and out_codes is not None and out.dim() == len(shape)
                    and torch.equal(out_codes, in_codes))
            flattened = (in_codes is not None and out.dim() == 2 and out.shape[1] % len(in_codes) == 0
                         and bool((out[0].reshape(len(in_codes), -1) == in_codes[:, None]).all()))
            if same or (flattened and (flatten or not _has_literal_sizes(node))):
                if src in self.merged:
                    self.merged.add(node)
                return label
            self.freeze(arg_labels[0], f"{_describe(node)} depends on the channel count")
            return label
        self.freeze(arg_labels[0], f"{_describe(node)} splits the channels")
        return type(out)(collapse(t) for t in out)

    def pad_label(self, node: fx.Node, label: Label, value: Tensor):
        args, kwargs = self.concrete(node)
        pad = list(args[1] if len(args) > 1 else kwargs["pad"])
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        fill = args[3] if len(args) > 3 else kwargs.get("value", None)
        codes = channel_codes(label)
        if codes is None:
            return self.opaque(node, value, f"{_describe(node)} pads a reshaped tensor")
        ndim = value.dim()
        channel_pair = 2 * (ndim - 2)  # index of dim 1's (before, after) pair in ``pad``
        before, after = (pad[channel_pair:channel_pair + 2] + [0, 0])[:2] if len(pad) > channel_pair else (0, 0)
        zero_fill = mode != "constant" or not fill
        if len(pad) > channel_pair + 2:
            return self.opaque(node, value, f"{_describe(node)} pads the batch dimension")
        if before or after:
            reason = f"{_describe(node)} adds channels by padding"
            self.freeze(label, reason)
            parts = [self.new_space(n, "constant", node.name, z=True, frozen=reason) for n in (before, after)]
            return Chan(torch.cat([parts[0], codes, parts[1]]))
        return label if zero_fill else _clear_z(label)

    def reduce_label(self, node: fx.Node, label: Label, value):
        args, kwargs = self.concrete(node)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        ndim = self.values[node.args[0]].dim()
        if dims is None or not isinstance(value, Tensor):
            return self.opaque(node, value, f"{_describe(node)} reduces over channels")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = {d + ndim if d < 0 else d for d in dims}
        if dims & {0, 1} or channel_codes(label) is None:
            return self.opaque(node, value, f"{_describe(node)} reduces over the batch or channels")
        return Chan(channel_codes(label))

    def concrete(self, node: fx.Node):
        """The node's args and kwargs with traced nodes replaced by their (meta) values."""
        return (fx.node.map_arg(node.args, self.values.__getitem__),
                fx.node.map_arg(node.kwargs, self.values.__getitem__))

    def opaque(self, node: fx.Node, value, reason: str):
        for arg in node.all_input_nodes:
            lbl = self.labels.get(arg)
            if lbl is not None:
                self.freeze(lbl, reason)
        return self._fresh(value, node.name, reason)

    def _fresh(self, value, owner: str, reason: str):
        if isinstance(value, Tensor):
            return Chan(self.new_space(value.shape[1], "opaque", owner, frozen=reason)) if value.dim() >= 2 else None
        if isinstance(value, (tuple, list)):
            return type(value)(self._fresh(v, owner, reason) for v in value)
        return None


class _UserError(ValueError):
    pass


def _clear_z(label: Label) -> Label:
    return Chan(with_z(label.codes, False)) if isinstance(label, Chan) else Full(with_z(label.codes, False))


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target} (node {node.name!r})"


def _channel_extent(other, out_ndim: int) -> int:
    """How many channels a broadcast operand spans (1 for scalars)."""
    if not isinstance(other, Tensor) or other.dim() == 0:
        return 1
    padded = [1] * (out_ndim - other.dim()) + list(other.shape)
    return padded[1] if len(padded) > 1 else 1


def _has_literal_sizes(node: fx.Node) -> bool:
    """A view/reshape whose target shape has a literal size besides dim 0 and -1."""
    if node.target not in ("view", "reshape", torch.reshape):
        return False
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return any(isinstance(s, int) and s != -1 for s in list(sizes)[1:])


def meta_call(module: nn.Module, args, kwargs):
    """Run a leaf module on meta tensors without touching its parameters or state."""
    x = args[0] if args else None
    if isinstance(module, _ConvNd) and not module.transposed:
        if x.dim() < 2 or x.shape[1] != module.in_channels:
            raise ValueError(f"{type(module).__name__} expects {module.in_channels} input channels, "
                             f"got a tensor of shape {tuple(x.shape)}")
        weight = module.weight.to("meta")
        bias = module.bias.to("meta") if module.bias is not None else None
        return module._conv_forward(x, weight, bias)
    if isinstance(module, nn.Linear):
        return nn.functional.linear(x, module.weight.to("meta"),
                                    module.bias.to("meta") if module.bias is not None else None)
    if isinstance(module, MaskedBatchNorm):
        return x.index_select(1, module.index.to("meta"))
    if isinstance(module, _BatchNorm):
        if x.dim() < 2 or x.shape[1] != module.num_features:
            raise ValueError(f"expected {module.num_features} channels, got input of shape {tuple(x.shape)}")
        return torch.empty_like(x)
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    try:
        if not state:
            return module.forward(*args, **kwargs)  # .forward: no user hooks fire on meta tensors
        return torch.func.functional_call(module, {k: v.to("meta") for k, v in state.items()}, args, kwargs)
    except (RuntimeError, NotImplementedError):
        # data-dependent code (an opaque leaf) cannot run on meta: run it on zeros, on copies of its state
        real = fx.node.map_aggregate(args, lambda a: torch.zeros(a.shape, dtype=a.dtype)
                                     if isinstance(a, Tensor) else a)
        copies = {k: v.detach().clone() for k, v in state.items()}
        out = torch.func.functional_call(module, copies, real, kwargs)
        return fx.node.map_aggregate(out, lambda t: t.to("meta") if isinstance(t, Tensor) else t)
