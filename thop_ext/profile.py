"""``profile(model, inputs)``: MACs, FLOPs and live parameters of a (pruned or zeroed) model.

The forward pass is thop's: ``thop.profile(model, inputs, custom_ops=...)`` with a hook for every
module type present in the model, so thop's exact-type lookup never leaves a conv subclass
uncounted. The hooks apply :mod:`thop_ext.rules` (weight-aware counts) to modules with a rule;
:class:`thop_ext.functional.FunctionalCounter` counts every other tensor op. Parameters are read
from the weights, not the forward pass, so modules that never run are counted too.
"""

from __future__ import annotations

from collections.abc import Sequence

import thop
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .formatting import LayerRow, Profile
from .functional import FunctionalCounter
from .hygiene import ModelStateGuard
from .rules import StaticCounts, call_counts, has_rule, static_counts

__all__ = ["profile"]

Inputs = Tensor | Sequence[Tensor] | Sequence[int]


def _like(model: nn.Module) -> Tensor | None:
    """A floating tensor of the model, whose device and dtype a shape-made input should take."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None


def _as_inputs(inputs: Inputs, model: nn.Module) -> tuple[Tensor, ...]:
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list, torch.Size)) and inputs:
        if all(isinstance(d, int) and not isinstance(d, bool) for d in inputs):
            if any(d <= 0 for d in inputs):
                raise ValueError(f"thop_ext.profile: input shape {tuple(inputs)} has a non-positive size")
            like = _like(model)
            if like is None:
                return (torch.randn(1, *inputs),)
            return (torch.randn(1, *inputs, device=like.device, dtype=like.dtype),)
        if all(isinstance(t, Tensor) for t in inputs):
            return tuple(inputs)
    raise TypeError("thop_ext.profile: inputs must be a tensor, a tuple of tensors, or a shape without the "
                    f"batch dimension such as (3, 32, 32); got {type(inputs).__name__}: {inputs!r:.80}")


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


class _Recorder:
    """Per-module totals filled by the hooks during thop's forward pass."""

    def __init__(self, model: nn.Module, skip_zero: bool) -> None:
        self.static: dict[int, StaticCounts] = {}
        seen: set[int] = set()
        for module in model.modules():
            own = list(module.parameters(recurse=False))
            counts = static_counts(module, skip_zero)
            if not has_rule(module) or any(id(p) in seen for p in own):
                # unruled module, or weights shared with a module counted before: plain numel, once
                counts = StaticCounts(counts.live_slices, counts.live_bias, counts.live_channels,
                                      sum(p.numel() for p in own if id(p) not in seen))
            seen.update(id(p) for p in own)
            self.static[id(module)] = counts
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


def profile(model: nn.Module, inputs: Inputs, *, skip_zero: bool = True) -> Profile:
    """Count MACs, FLOPs and parameters of ``model`` on ``inputs`` (batch included).

    ``inputs``: a tensor, a tuple of tensors, or a shape such as ``(3, 224, 224)`` (batch 1, made
    on the model's device and dtype). A model on the meta device is counted by shapes alone
    (``skip_zero=False``): fast, and the way to count a model too large to allocate.
    ``skip_zero=True`` counts live weights only (see :mod:`thop_ext.rules`), so a zeroed model
    costs what its physically pruned twin costs. The model is left as it was: same modes,
    buffers, hooks and ``state_dict`` keys.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"thop_ext.profile: model must be an nn.Module, got {type(model).__name__}")
    if skip_zero:
        _check_weights_readable(model)
    args = _as_inputs(inputs, model)
    recorder = _Recorder(model, skip_zero)
    # thop maps hooks by exact type: give it one for every type present
    custom_ops = {type(m): recorder.count for m in model.modules() if has_rule(m)}
    with ModelStateGuard(model):
        pre_hooks = [m.register_forward_pre_hook(recorder.before) for m in model.modules()]
        try:
            recorder.counter.start()
            thop.profile(model, inputs=args, custom_ops=custom_ops, verbose=False)
        finally:
            recorder.counter.stop()
            for handle in [*pre_hooks, *(h for pair in recorder.armed.values() for h in pair)]:
                handle.remove()
    return _build_profile(model, recorder, skip_zero, args)


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

