"""Counting the tensor ops that run outside the weight-aware module rules.

Residual ``+``, ``F.relu``, pooling, ``torch.cat``, a ``F.conv2d`` called on a bare weight: thop
sees none of these. A :class:`FunctionalCounter` is a ``TorchDispatchMode`` that is active during
thop's forward pass; it sees every aten op, skips those that run inside a module with a rule
(that module's rule already counted them) and charges the rest to the innermost module running,
through a small op table (op -> handler), as fvcore does.

Convention (per op, batch included): conv / matmul ops as torch's ``FlopCounterMode`` counts them
(its formula table, halved to MACs; no zero skipping: a bare weight has no channel structure);
pointwise arithmetic and activations 1 FLOP per output element; batch norm 2 per element; mean /
sum 1 per input element; pooling one per kernel element and output element (max pooling one less);
softmax 3 per element. Moves, views, copies, ``cat`` and index ops cost 0. Ops whose tensors
all hold at most one element (scalar bookkeeping, such as thop's own counters) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["FunctionalCounter", "op_cost"]

aten = torch.ops.aten

# Pointwise-tagged ops that only move or create data.
_FREE_POINTWISE = {aten.clone, aten.copy, aten.copy_, aten._to_copy, aten.fill, aten.fill_, aten.zero_,
                   aten.lift_fresh_copy, aten.masked_fill, aten.masked_fill_, aten.where}


def _numel(value) -> int:
    return value.numel() if isinstance(value, Tensor) else 0


def _scalars_only(args: tuple, out) -> bool:
    values = [*args, *(out if isinstance(out, (tuple, list)) else (out,))]
    for value in values:
        if isinstance(value, (tuple, list)):
            values.extend(value)
        elif isinstance(value, Tensor) and value.numel() > 1:
            return False
    return True


def _out(out) -> Tensor | None:
    return out[0] if isinstance(out, (tuple, list)) else out


def _kernel_numel(args) -> int:
    kernel = args[1] if len(args) > 1 else 1
    kernel = [kernel] if isinstance(kernel, int) else list(kernel)
    return prod(kernel) if kernel else 1


def _batch_norm(args, kwargs, out) -> int:
    return 2 * _numel(_out(out))


def _reduce(args, kwargs, out) -> int:
    return _numel(args[0])


def _avg_pool(args, kwargs, out) -> int:
    return _kernel_numel(args) * _numel(_out(out))


def _max_pool(args, kwargs, out) -> int:
    return (_kernel_numel(args) - 1) * _numel(_out(out))


def _adaptive_pool(args, kwargs, out) -> int:
    return _numel(args[0])


def _softmax(args, kwargs, out) -> int:
    return 3 * _numel(_out(out))


_ELEMENTWISE: dict[object, Callable[[tuple, dict, object], int]] = {
    aten.native_batch_norm: _batch_norm,
    aten._native_batch_norm_legit: _batch_norm,
    aten._native_batch_norm_legit_no_training: _batch_norm,
    aten.mean: _reduce,
    aten.sum: _reduce,
    aten.avg_pool1d: _avg_pool,
    aten.avg_pool2d: _avg_pool,
    aten.avg_pool3d: _avg_pool,
    aten.max_pool1d: _max_pool,
    aten.max_pool2d: _max_pool,
    aten.max_pool2d_with_indices: _max_pool,
    aten.max_pool3d_with_indices: _max_pool,
    aten._adaptive_avg_pool2d: _adaptive_pool,
    aten._adaptive_avg_pool3d: _adaptive_pool,
    aten.adaptive_max_pool2d: _adaptive_pool,
    aten.adaptive_max_pool3d: _adaptive_pool,
    aten._softmax: _softmax,
    aten._log_softmax: _softmax,
}


def op_cost(func, args: tuple, kwargs: dict, out) -> tuple[int, int]:
    """(MACs, FLOPs) of one aten op call under this module's convention."""
    packet = func.overloadpacket
    if packet in flop_registry:
        macs = flop_registry[packet](*args, **kwargs, out_val=out) // 2
        return macs, 2 * macs
    handler = _ELEMENTWISE.get(packet)
    if handler is not None:
        return 0, int(handler(args, kwargs, out))
    if torch.Tag.pointwise in func.tags and packet not in _FREE_POINTWISE:
        return 0, _numel(_out(out))
    return 0, 0


class FunctionalCounter(TorchDispatchMode):
    """Charges op costs to the innermost running module, except inside modules with a rule.

    ``enter(module)`` / ``leave(module)`` are called by forward pre- and post-hooks; ``counted``
    says which modules have a rule; ``start()`` / ``stop()`` push and pop the mode, so that the
    forward hooks between a module's end and its ``leave`` run outside it. Totals per module are
    in ``macs`` and ``flops``.
    """

    def __init__(self, counted: set[int]) -> None:
        super().__init__()
        self.counted = counted
        self.stack: list[nn.Module] = []
        self.inside_rule = 0
        self.active = False
        self.macs: dict[int, int] = {}
        self.flops: dict[int, int] = {}

    def enter(self, module: nn.Module) -> None:
        self.stack.append(module)
        if id(module) in self.counted:
            self.inside_rule += 1
            self.stop()  # its rule counts it: its ops need not pay for Python dispatch

    def leave(self, module: nn.Module) -> None:
        # pop up to this module: a forward that raised inside a child leaves its entries behind
        while self.stack:
            top = self.stack.pop()
            if id(top) in self.counted:
                self.inside_rule -= 1
            if top is module:
                return

    def start(self) -> None:
        if not self.active and not self.inside_rule:
            self.__enter__()
            self.active = True

    def stop(self) -> None:
        """Leave the dispatch stack: hooks (thop's bookkeeping) then run at full speed, uncounted."""
        if self.active:
            self.active = False
            self.__exit__(None, None, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.inside_rule or not self.stack or _scalars_only(args, out):
            return out
        macs, flops = op_cost(func, args, kwargs, out)
        if macs or flops:
            owner = id(self.stack[-1])
            self.macs[owner] = self.macs.get(owner, 0) + macs
            self.flops[owner] = self.flops.get(owner, 0) + flops
        return out
