"""The op -> handler table: how each traced function or method moves channels.

A handler is ``handler(ctx, node, value) -> label``: ``ctx`` is the labelling interpreter
(``interpreter.ChannelInterpreter``: labels of earlier nodes, their meta values, the union-find),
``value`` the node's meta output. Built from the tables in ``ops.py``: adding an op is one entry
there, or one :func:`register_op_handler` call. Targets are callables (``call_function``) or
method names (``call_method``). An op without a handler is opaque: its channels are frozen.
Modules are not here: each module type has a channel rule (``slimbench.core.rules``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx

from slimbench.analysis import ops
from slimbench.analysis.params import param_operand
from slimbench.core.labels import Chan, Label, as_full, channel_codes, clear_z, collapse, with_z, zbit

__all__ = ["OP_HANDLERS", "register_op_handler", "handler_for", "label_call", "describe"]

Ctx = Any  # a ChannelInterpreter (not imported: it imports this module)
Handler = Callable[[Ctx, fx.Node, Any], Any]
OP_HANDLERS: dict[object, Handler] = {}


def register_op_handler(target: object, handler: Handler) -> None:
    """Label ``target`` (a function, or a method name as a string) with ``handler(ctx, node, value)``."""
    if not callable(handler):
        raise TypeError(f"the handler for {target!r} must be callable as handler(ctx, node, value)")
    OP_HANDLERS[target] = handler


def handler_for(target: object) -> Handler | None:
    try:
        return OP_HANDLERS.get(target)
    except TypeError:  # unhashable target
        return None


def label_call(ctx: Ctx, node: fx.Node, value: Any) -> Any:
    """Label a ``call_function`` / ``call_method`` node."""
    handler = handler_for(node.target)
    if handler is not None:
        return handler(ctx, node, value)
    if not isinstance(value, (Tensor, tuple, list)) and not (node.users and _reads_labelled(ctx, node)):
        return None  # an unused flag or size, or one computed from no channels
    return ctx.opaque(node, value, _not_mapped(node))


def _reads_labelled(ctx: Ctx, node: fx.Node) -> bool:
    return any(ctx.labels.get(arg) is not None for arg in node.all_input_nodes)


def describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{target} (node {node.name!r})"


def _not_mapped(node: fx.Node) -> str:
    return f"{describe(node)} is not an op slimbench maps channels through"


def _tensor_op(fn: Handler) -> Handler:
    """Ops whose non-tensor results (sizes, flags) carry no channels."""
    def handler(ctx: Ctx, node: fx.Node, value: Any) -> Any:
        if not isinstance(value, (Tensor, tuple, list)):
            return None
        return fn(ctx, node, value)
    handler.__name__ = fn.__name__
    return handler


# -- the kinds of ops ---------------------------------------------------------------------------
def pointwise(keeps_zero: bool) -> Handler:
    def handle(ctx: Ctx, node: fx.Node, value: Any) -> Any:
        if ctx.input_label(node) is None or not isinstance(value, Tensor):
            return ctx.opaque(node, value, _not_mapped(node))
        return ctx.pointwise_label(node, value, keeps_zero)
    return _tensor_op(handle)


def binary(kind: str) -> Handler:
    def handle(ctx: Ctx, node: fx.Node, value: Any) -> Any:
        if not isinstance(value, Tensor):
            return ctx.opaque(node, value, _not_mapped(node))
        return binary_label(ctx, node, kind, value)
    return _tensor_op(handle)


def binary_label(ctx: Ctx, node: fx.Node, kind: str, value: Tensor) -> Any:
    a, b = (node.args + (None,))[:2] if len(node.args) >= 2 else (node.args[0], node.kwargs.get("other"))
    la = ctx.labels.get(a) if isinstance(a, fx.Node) else None
    lb = ctx.labels.get(b) if isinstance(b, fx.Node) else None
    va = ctx.env.get(a) if isinstance(a, fx.Node) else a
    vb = ctx.env.get(b) if isinstance(b, fx.Node) else b
    ca, cb = channel_codes(la), channel_codes(lb)
    if value.dim() < 2:
        return ctx.opaque(node, value, f"{describe(node)} on tensors without channels")
    channels = value.shape[1]
    if ca is not None and cb is not None and va.dim() == vb.dim() and len(ca) == len(cb) == channels:
        ctx.union(ca, cb, residual=kind == "sum")
        if kind == "sum":
            z = zbit(ca).bool() & zbit(cb).bool()
            ctx.merged.add(node)
        elif kind == "product":
            z = zbit(ca).bool() | zbit(cb).bool()
        else:
            z = zbit(ca).bool()
        return Chan(with_z(ca, z))
    # one side carries the channels; the other is a constant, a scalar or broadcast over channels
    for other, codes, other_label, is_left in ((vb, ca, lb, True), (va, cb, la, False)):
        if codes is None or len(codes) != channels:
            continue
        if _channel_extent(other, value.dim()) > 1:  # per channel: a layer scale / bias parameter, or opaque
            label = param_operand(ctx, node, b if is_left else a, codes, kind, is_left, value)
            if label is not None:
                return label
            continue
        if other_label is not None:
            ctx.freeze(other_label, f"{describe(node)} broadcasts it over all channels")
        if kind == "product":
            other_codes = channel_codes(other_label)
            z = zbit(codes).bool() | (zbit(other_codes).bool() if other_codes is not None else False)
            return Chan(with_z(codes, z))
        if kind == "quotient" and is_left:
            return Chan(codes)
        if kind == "sum" and _is_zero_number(other):  # x + 0 (a branch that is absent): the identity
            if (a if is_left else b) in ctx.merged:
                ctx.merged.add(node)
            return Chan(codes)
        return Chan(with_z(codes, False))
    return ctx.opaque(node, value, f"{describe(node)} combines tensors whose channels do not line up")


@_tensor_op
def cat(ctx: Ctx, node: fx.Node, value: Tensor) -> Any:
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    dim = dim + value.dim() if dim < 0 else dim
    labels = [ctx.labels.get(t) for t in tensors]
    if any(lbl is None for lbl in labels):
        return ctx.opaque(node, value, f"{describe(node)} concatenates an unlabelled tensor")
    codes = [channel_codes(lbl) for lbl in labels]
    if dim == 1:
        ctx.merged.add(node)
        if all(c is not None for c in codes):
            return Chan(torch.cat(codes))
        fulls = [as_full(lbl, ctx.env[t].shape) for lbl, t in zip(labels, tensors, strict=True)]
        return collapse(torch.cat(fulls, 1))
    if dim != 0 and all(c is not None and len(c) == len(codes[0]) for c in codes):
        for c in codes[1:]:
            ctx.union(codes[0], c, residual=False)
        z = torch.stack([zbit(c).bool() for c in codes]).all(0)
        return Chan(with_z(codes[0], z))
    return ctx.opaque(node, value, f"{describe(node)} concatenates along dim {dim}")


def reshape(flatten: bool) -> Handler:
    def handle(ctx: Ctx, node: fx.Node, value: Any) -> Any:
        if ctx.input_label(node) is None:
            return ctx.opaque(node, value, _not_mapped(node))
        return reshape_label(ctx, node, value, flatten)
    return _tensor_op(handle)


def getitem(ctx: Ctx, node: fx.Node, value: Any) -> Any:
    if node.args[0] in ctx.shapes:  # x.shape[i] / x.size()[i], or one name of ``n, c, h, w = x.shape``
        return _shape_item(ctx, node)
    if not isinstance(value, (Tensor, tuple, list)):
        return None
    label = ctx.input_label(node)
    if isinstance(label, (tuple, list)):  # one output of a multi-output op
        return label[node.args[1]]
    return reshape(False)(ctx, node, value)


def reshape_label(ctx: Ctx, node: fx.Node, value: Any, flatten: bool) -> Any:
    """Replay a view / transpose / flatten / split on the label tensor itself: channels tracked exactly."""
    src = node.args[0]
    label = ctx.labels.get(src)
    shape = ctx.env[src].shape
    full = as_full(label, shape)
    args, kwargs = ctx.concrete(node)

    def replay(codes: Tensor):
        if node.op == "call_module":
            return ctx.modules[node.target](codes)
        if node.op == "call_method":
            return getattr(codes, node.target)(*args[1:], **kwargs)
        return node.target(codes, *args[1:], **kwargs)

    for size in _sizes(node):
        if isinstance(size, fx.Node) and size in ctx.counts:
            ctx.count_checks.append((ctx.counts[size], label, f"{describe(size)} sizes {describe(node)}"))
    try:
        out = replay(full)
    except RuntimeError:  # a view of the broadcast labels can need real strides
        out = replay(full.contiguous())
    in_codes = channel_codes(label)
    if isinstance(out, Tensor):
        result = collapse(out)
        out_codes = channel_codes(result)
        regrouped = out.dim() != len(shape) and (node.target not in _ADDS_OR_DROPS_DIMS
                                                 or _has_literal_sizes(node, channel_only=True))
        same = (in_codes is not None and out_codes is not None and torch.equal(out_codes, in_codes)
                and not regrouped)
        flattened = (in_codes is not None and out.dim() == 2 and out.shape[1] % len(in_codes) == 0
                     and bool((out[0].reshape(len(in_codes), -1) == in_codes[:, None]).all()))
        if same or (flattened and (flatten or not _has_literal_sizes(node))):
            if src in ctx.merged:
                ctx.merged.add(node)
            return result
        moved = in_codes is not None and out_codes is None and node.target in ops.MOVES_DIMS
        ctx.freeze(label, f"{describe(node)} " + ("moves the channels off dim 1" if moved
                                                   else "depends on the channel count"))
        return result
    ctx.freeze(label, f"{describe(node)} splits the channels")
    return type(out)(collapse(t) for t in out)


def _pad(ctx: Ctx, node: fx.Node, value: Any) -> Any:
    label = ctx.input_label(node)
    if label is None or not isinstance(value, Tensor):
        return ctx.opaque(node, value, _not_mapped(node))
    args, kwargs = ctx.concrete(node)
    pad = list(args[1] if len(args) > 1 else kwargs["pad"])
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    fill = args[3] if len(args) > 3 else kwargs.get("value", None)
    codes = channel_codes(label)
    if codes is None:
        return ctx.opaque(node, value, f"{describe(node)} pads a reshaped tensor")
    channel_pair = 2 * (value.dim() - 2)  # index of dim 1's (before, after) pair in ``pad``
    before, after = (pad[channel_pair:channel_pair + 2] + [0, 0])[:2] if len(pad) > channel_pair else (0, 0)
    zero_fill = mode != "constant" or not fill
    if len(pad) > channel_pair + 2:
        return ctx.opaque(node, value, f"{describe(node)} pads the batch dimension")
    if before or after:
        reason = f"{describe(node)} adds channels by padding"
        ctx.freeze(label, reason)
        parts = [ctx.new_space(n, "constant", node.name, z=True, frozen=reason) for n in (before, after)]
        return Chan(torch.cat([parts[0], codes, parts[1]]))
    return label if zero_fill else clear_z(label)


def _reduce(ctx: Ctx, node: fx.Node, value: Any) -> Any:
    label: Label | None = ctx.input_label(node)
    if label is None:
        return ctx.opaque(node, value, _not_mapped(node))
    args, kwargs = ctx.concrete(node)
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    ndim = ctx.env[node.args[0]].dim()
    if dims is None or not isinstance(value, Tensor):
        return ctx.opaque(node, value, f"{describe(node)} reduces over channels")
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = {d + ndim if d < 0 else d for d in dims}
    if dims & {0, 1} or channel_codes(label) is None:
        return ctx.opaque(node, value, f"{describe(node)} reduces over the batch or channels")
    return Chan(channel_codes(label))


# -- sizes read as values ---------------------------------------------------------------------------
def _shape_query(ctx: Ctx, node: fx.Node, value: Any) -> None:
    """``x.size()``, ``x.size(d)``, ``x.shape``, ``x.numel()``, ``x.dim()``: sizes, not channels.

    A size that includes the channel count freezes the channels it counts when it is used as a
    value (arithmetic, a head split, a new tensor...): the pruned model would compute with
    another number than the zeroed one. The one use proven exact is the channel size of a
    ``view`` / ``reshape`` that keeps every channel at dim 1 (``z.view(b, c)`` in an SE block).
    """
    src = node.args[0]
    label = ctx.labels.get(src) if isinstance(src, fx.Node) else None
    if label is not None and node.target is getattr and isinstance(value, Tensor):  # x.mT, x.data...
        return ctx.opaque(node, value, _not_mapped(node))
    if label is None or node.target in _NO_CHANNELS or (node.target is getattr and node.args[1] != "shape"):
        return None
    if node.target == "numel":
        if node.users:
            ctx.freeze(label, f"{describe(node)} reads the channel count as a value")
        return None
    args, kwargs = ctx.concrete(node)
    dim = (args[1] if len(args) > 1 else kwargs.get("dim")) if node.target == "size" else None
    ndim = ctx.env[src].dim()
    if dim is None:  # the whole shape: its items are judged where they are read
        ctx.shapes[node] = (label, ndim)
        for user in node.users:
            if not (user.op == "call_function" and user.target is operator.getitem and user.args[0] is node):
                ctx.freeze(label, f"{describe(user)} reads the channel count as a value")
        return None
    if dim % ndim == 1:
        _channel_count(ctx, node, label)
    return None


# queries whose answer never depends on the channel count
_NO_CHANNELS = {"dim", "is_contiguous", "is_floating_point", "get_device", "element_size", "type"}


def _shape_item(ctx: Ctx, node: fx.Node) -> None:
    label, ndim = ctx.shapes[node.args[0]]
    index = node.args[1]
    if isinstance(index, int) and index % ndim == 1:
        _channel_count(ctx, node, label)
    elif isinstance(index, slice) and 1 in range(ndim)[index] and node.users:
        ctx.freeze(label, f"{describe(node)} reads the channel count as a value")
    return None


def _channel_count(ctx: Ctx, node: fx.Node, label: Any) -> None:
    for user in node.users:
        if not _is_channel_size(user, node):
            ctx.freeze(label, f"{describe(node)} reads the channel count as a value (used by {describe(user)})")
            return
    ctx.counts[node] = label  # each view it sizes must hold these very channels (checked at the end)


def _is_channel_size(user: fx.Node, count: fx.Node) -> bool:
    """Is ``count`` only the dim-1 size of this view / reshape (channels then kept exactly or frozen)?"""
    if not ((user.op == "call_method" and user.target in ("view", "reshape"))
            or (user.op == "call_function" and user.target is torch.reshape and len(user.args) == 2)):
        return False
    sizes = _sizes(user)
    return (len(sizes) > 1 and sizes[1] is count and count not in sizes[:1] + sizes[2:]
            and user.args[0] is not count and not user.kwargs)


def _sizes(node: fx.Node) -> list:
    """The target sizes of a view / reshape call, given as ``*sizes`` or as one tuple."""
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return list(sizes)


def _is_zero_number(value: Any) -> bool:
    """A Python number that is exactly 0 (adding it keeps a pruned channel at 0)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def _channel_extent(other: Any, out_ndim: int) -> int:
    """How many channels a broadcast operand spans (1 for scalars)."""
    if not isinstance(other, Tensor) or other.dim() == 0:
        return 1
    padded = [1] * (out_ndim - other.dim()) + list(other.shape)
    return padded[1] if len(padded) > 1 else 1


# reshapes that keep dim 1 whole and only add or merge other dims (``z.view(b, c, 1, 1)``, ``x.flatten(2)``)
_ADDS_OR_DROPS_DIMS = {"view", "reshape", torch.reshape, "flatten", torch.flatten, "unsqueeze", torch.unsqueeze}


def _has_literal_sizes(node: fx.Node, channel_only: bool = False) -> bool:
    """A view/reshape whose target shape has a literal size besides dim 0 and -1 (at dim 1 only)."""
    if node.target not in ("view", "reshape", torch.reshape):
        return False
    sizes = node.args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = sizes[0]
    return any(isinstance(s, int) and s != -1 for s in list(sizes)[1:2 if channel_only else None])


# -- the table ------------------------------------------------------------------------------------
for _target, _keeps in (*ops.POINTWISE_FUNCTIONS.items(), *ops.POINTWISE_METHODS.items()):
    register_op_handler(_target, pointwise(_keeps))
for _target, _kind in (*ops.BINARY.items(), *ops.BINARY_METHODS.items()):
    register_op_handler(_target, binary(_kind))
for _target in ops.CAT:
    register_op_handler(_target, cat)
for _target in (*ops.RESHAPE_FUNCTIONS, *ops.RESHAPE_METHODS):
    register_op_handler(_target, reshape(_target in ops.FLATTENS))
register_op_handler(operator.getitem, getitem)
for _target in ops.PAD_FUNCTIONS:
    register_op_handler(_target, _tensor_op(_pad))
for _target in (*ops.REDUCE_FUNCTIONS, *ops.REDUCE_METHODS):
    register_op_handler(_target, _tensor_op(_reduce))
for _target in (*ops.SHAPE_METHODS, *_NO_CHANNELS, getattr):
    register_op_handler(_target, _shape_query)
