"""``profile(model, inputs)``: MACs, FLOPs and live parameters of a (pruned or zeroed) model.

The forward pass is thop's: ``thop.profile(model, inputs, custom_ops=...)`` with a hook for every
module type present in the model, so thop's exact-type lookup never leaves a conv subclass
uncounted. The hooks apply :mod:`thop_ext.rules` (weight-aware counts) to modules with a rule;
:class:`thop_ext.functional.FunctionalCounter` counts every other tensor op. Parameters and live
weights are read from the real weights before the pass, so modules that never run are counted too.

Counts depend on shapes once the live weights are known, so the pass runs on meta tensors (the
model's parameters and buffers swapped for meta twins through ``torch.func.functional_call``): no
arithmetic, a fraction of one real forward. A forward that needs values (``.item()``, a branch on
data, a tensor attribute that is not a parameter or buffer) fails on meta and is rerun on the real
tensors, so the counts are the same either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from itertools import chain
from math import prod

import thop
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from slimbench.core.inputs import as_example_inputs
from thop_ext.formatting import LayerRow, Profile
from thop_ext.functional import FunctionalCounter
from thop_ext.hygiene import ModelStateGuard
from thop_ext.rules import StaticCounts, call_counts, has_rule, static_counts

__all__ = ["profile"]

Inputs = Tensor | Sequence[Tensor] | Sequence[int]


def _like(model: nn.Module) -> Tensor | None:
    """A floating tensor of the model, whose device and dtype a shape-made input should take."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None


def _check_weights_readable(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        if param.is_meta:
            raise ValueError(f"thop_ext.profile: parameter {name!r} is on the meta device, so its zeros cannot be "
                             "read; pass skip_zero=False to count a meta model by shapes alone")


def _output_shape(output) -> tuple[int, ...] | None:
    if isinstance(output, Tensor):
        return tuple(output.shape)
    if isinstance(output, (tuple, list)) and output:
        return _output_shape(output[0])
    if isinstance(output, dict) and output:
        return _output_shape(next(iter(output.values())))
    return None


def _static_counts(model: nn.Module, skip_zero: bool) -> dict[int, StaticCounts]:
    """Live slices / channels and parameters per module, read from the real weights."""
    static: dict[int, StaticCounts] = {}
    seen: set[int] = set()
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        counts = static_counts(module, skip_zero)
        if not has_rule(module) or any(id(p) in seen for p in own):
            # unruled module, or weights shared with a module counted before: plain numel, once
            counts = StaticCounts(counts.live_slices, counts.live_bias, counts.live_channels,
                                  sum(p.numel() for p in own if id(p) not in seen))
        seen.update(id(p) for p in own)
        static[id(module)] = counts
    return static


class _OnMeta(nn.Module):
    """Calls ``model`` with its parameters and buffers swapped for meta tensors of the same shapes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training
        named = chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))
        self.meta_state = {name: torch.empty_like(t, device="meta") for name, t in named}

    def forward(self, *args):
        return torch.func.functional_call(self.model, self.meta_state, args, strict=False)


_aten = torch.ops.aten
_BATCH_NORMS = {_aten.native_batch_norm, _aten._native_batch_norm_legit, _aten._native_batch_norm_legit_no_training}
_SAME_SHAPE = {_aten.add, _aten.sub, _aten.mul, _aten.div, _aten.add_, _aten.sub_, _aten.mul_, _aten.div_}
# ops whose output is not a same-dtype, same-layout twin of the input (copies may change layout)
_NOT_SHAPE_ONLY = {_aten.clone, _aten.copy, _aten._to_copy, _aten.eq, _aten.ne, _aten.lt, _aten.le, _aten.gt,
                   _aten.ge, _aten.isnan, _aten.isinf, _aten.logical_not, _aten.logical_and, _aten.logical_or,
                   _aten.signbit}


class _ShapeOnly(TorchDispatchMode):
    """Answers batch norm and same-shape pointwise ops on meta tensors from the shapes alone.

    torch's meta kernels for these are Python decompositions (about 1-2 ms a call), slower than
    the real op on CIFAR-sized tensors; counting needs the output shape only. Anything else, or
    inputs of different shapes or dtypes, goes to torch's own meta kernel.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        tensors = [a for a in args if isinstance(a, Tensor)]
        if tensors and not kwargs and all(t.is_meta for t in tensors):  # kwargs: out=, memory_format=, ...
            first = tensors[0]
            if packet in _BATCH_NORMS:
                stats = first.new_empty((0,))
                return torch.empty_like(first), stats, stats
            if ((packet in _SAME_SHAPE or torch.Tag.pointwise in func.tags) and packet not in _NOT_SHAPE_ONLY
                    and args[0] is first and first.is_floating_point()
                    and all(t.shape == first.shape and t.dtype == first.dtype for t in tensors)):
                return first if packet.__name__.endswith("_") else torch.empty_like(first)
        return func(*args, **kwargs)


class _Recorder:
    """Per-module totals filled by the hooks during thop's forward pass."""

    def __init__(self, model: nn.Module, static: dict[int, StaticCounts]) -> None:
        self.static = static
        self.counter = FunctionalCounter({id(m) for m in model.modules() if has_rule(m)})
        self.macs: dict[int, int] = {}
        self.flops: dict[int, int] = {}
        self.shapes: dict[int, tuple[int, ...] | None] = {}
        self.order: list[int] = []
        self.armed: dict[int, tuple[RemovableHandle, RemovableHandle]] = {}

    def before(self, module: nn.Module, args) -> None:
        if id(module) not in self.armed:
            # registered now, after thop's hooks: one runs before them, one after them
            self.armed[id(module)] = (module.register_forward_hook(self.pause, prepend=True),
                                      module.register_forward_hook(self.resume))
        self.counter.enter(module)

    def pause(self, module: nn.Module, inputs, output) -> None:
        self.counter.stop()
        key = id(module)
        if key not in self.shapes:
            self.order.append(key)
        self.shapes[key] = _output_shape(output)

    def count(self, module: nn.Module, inputs, output) -> None:
        """thop's hook (``custom_ops``) for every module type that has a weight-aware rule."""
        key = id(module)
        macs, flops = call_counts(module, self.static[key], inputs, output)
        self.macs[key] = self.macs.get(key, 0) + macs
        self.flops[key] = self.flops.get(key, 0) + flops

    def resume(self, module: nn.Module, inputs, output) -> None:
        self.counter.leave(module)
        self.counter.start()


def profile(model: nn.Module, inputs: Inputs, *, skip_zero: bool = True,
            forward_on_meta: bool | None = None, verbose: bool = False) -> Profile:
    """Count MACs, FLOPs and parameters of ``model`` on ``inputs`` (batch included).

    ``inputs``: a tensor, a tuple of tensors, or a shape such as ``(3, 224, 224)`` (batch 1, made
    on the model's device and dtype). A model on the meta device is counted by shapes alone
    (``skip_zero=False``): fast, and the way to count a model too large to allocate.
    ``skip_zero=True`` counts live weights only (see :mod:`thop_ext.rules`), so a zeroed model
    costs what its physically pruned twin costs. The model is left as it was: same modes,
    buffers, hooks and ``state_dict`` keys.

    ``forward_on_meta``: where the counting pass runs; the counts are the same either way.
    ``None`` (default): on meta tensors when the model is large enough for that to be faster
    (resnet18 at 224 and up), falling back to the real tensors if the forward needs values;
    ``True``: on meta, errors surface; ``False``: always the real forward.

    Like thop's, ``macs, params = profile(model, inputs=(x,))`` unpacks the result; ``verbose=True``
    prints the per-module table.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"thop_ext.profile: model must be an nn.Module, got {type(model).__name__}")
    if skip_zero:
        _check_weights_readable(model)
    args = as_example_inputs(inputs, like=_like(model), what="thop_ext.profile: inputs")
    static = _static_counts(model, skip_zero)
    on_meta = _worth_meta(model, args) if forward_on_meta is None else forward_on_meta
    if _all_meta(model, args) or not on_meta:
        recorder = _count(model, model, args, static)
    else:
        try:
            recorder = _count(model, _OnMeta(model), tuple(a.to("meta") for a in args), static)
        except Exception:
            if forward_on_meta:
                raise
            recorder = _count(model, model, args, static)  # the forward needs values: run it for real
    result = _build_profile(model, recorder, skip_zero, args)
    if verbose:
        print(result.table())
    return result


# A meta pass costs about a millisecond per op whatever the sizes; a real one scales with the
# arithmetic. Measured on one CPU thread, the meta pass wins from resnet18 at 224x224 up
# (weight elements x input positions ~ 6e11) and loses on CIFAR models and mobile nets.
_META_WORTH_IT = 5e11


def _worth_meta(model: nn.Module, args: tuple[Tensor, ...]) -> bool:
    """Is a real forward likely dearer than a meta one? (weights of conv/linear x input positions)"""
    weights = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, Tensor))
    positions = max((prod(a.shape[2:]) * a.shape[0] if a.dim() > 2 else a.shape[0] for a in args if a.dim()),
                    default=1)
    return weights * positions >= _META_WORTH_IT


def _all_meta(model: nn.Module, args: tuple[Tensor, ...]) -> bool:
    return all(t.is_meta for t in chain(model.parameters(), model.buffers(), args))


def _count(model: nn.Module, runner: nn.Module, args: tuple[Tensor, ...],
           static: dict[int, StaticCounts]) -> _Recorder:
    """thop's forward pass of ``runner`` (``model`` or its meta twin) with the recorder's hooks."""
    recorder = _Recorder(model, static)
    # thop maps hooks by exact type: give it one for every type present
    custom_ops = {type(m): recorder.count for m in model.modules() if has_rule(m)}
    # the shape shortcut must sit below the counter on the dispatch stack, so the counter sees every op
    with ModelStateGuard(model), (_ShapeOnly() if isinstance(runner, _OnMeta) else nullcontext()):
        pre_hooks = [m.register_forward_pre_hook(recorder.before) for m in model.modules()]
        try:
            recorder.counter.start()
            thop.profile(runner, inputs=args, custom_ops=custom_ops, verbose=False)
        finally:
            recorder.counter.stop()
            for handle in [*pre_hooks, *(h for pair in recorder.armed.values() for h in pair)]:
                handle.remove()
    return recorder


def _build_profile(model: nn.Module, recorder: _Recorder, skip_zero: bool, args: tuple[Tensor, ...]) -> Profile:
    names = {id(m): (name, m) for name, m in model.named_modules(remove_duplicate=False)}
    macs = {k: recorder.macs.get(k, 0) + recorder.counter.macs.get(k, 0) for k in names}
    flops = {k: recorder.flops.get(k, 0) + recorder.counter.flops.get(k, 0) for k in names}
    order = recorder.order + [k for k in names if k not in recorder.shapes]
    rows = []
    for key in order:
        name, module = names[key]
        params = recorder.static[key].params
        is_leaf = next(iter(module.children()), None) is None
        if not (macs[key] or flops[key] or params or (is_leaf and key in recorder.shapes)):
            continue
        rows.append(LayerRow(name=name, type=type(module).__name__, macs=macs[key], flops=flops[key],
                             params=params, output_shape=recorder.shapes.get(key)))
    return Profile(macs=sum(r.macs for r in rows), flops=sum(r.flops for r in rows),
                   params=sum(r.params for r in rows), layers=rows, skip_zero=skip_zero,
                   input_shapes=[tuple(a.shape) for a in args])

