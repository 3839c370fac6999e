"""Weight-aware counting rules for the modules whose cost depends on which weights are live.

A module's rule is its channel rule in ``slimbench.core.rules`` (looked up along the MRO: plain
thop looks up ``type(m)`` exactly, so a subclass of ``nn.Conv2d`` counts 0 there); its
``count_as`` says which counting below applies (``conv``, ``linear``, ``batchnorm``, ``gather``),
so a user's module registered with ``ConvRule`` is counted as a conv. RNNs use thop's own rules.
Each rule has two halves: :func:`static_counts` reads the weights once, before the forward pass, and
:func:`call_counts` turns one call's input/output shapes into MACs and FLOPs.

Liveness is structural (``skip_zero=True``): whole channels are the unit, never single weights,
so a weight that happens to be exactly 0.0 changes nothing.

- conv / linear: an output channel is dead when its whole out-slice ``weight[o]`` is zero; an input
  channel is dead when its whole in-slice ``weight[:, i]`` is zero (per group for a grouped conv).
  The live kernel slices are live outputs x live inputs (in each group); a bias entry counts when
  its output channel is live or the bias entry itself is non-zero. A removed (all-zero) branch
  has no live channel, so it counts 0.
- batch norm (``MaskedBatchNorm`` included): a channel is dead when both gamma and beta are 0.
- RNNs (``nn.RNN`` / ``GRU`` / ``LSTM`` and their cells): thop's own rules (``thop.rnn_hooks``),
  whatever the weights; FLOPs are 2 x those MACs.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from thop.profile import register_hooks as _thop_hooks
from torch import Tensor, nn

from slimbench.core.rules import rule_for

__all__ = ["StaticCounts", "has_rule", "static_counts", "call_counts"]

RNN_TYPES = (nn.RNNBase, nn.RNNCellBase)


@dataclass(frozen=True)
class StaticCounts:
    """What one module's weights contribute, independent of the input.

    ``live_slices``: conv/linear (out, in) slices that carry weight; ``live_bias``: bias entries of
    live output channels (conv/linear); ``live_channels``: BN channels that are not dead; ``params``: the
    module's own parameters, counted as live weights (or by numel without zero skipping).
    """

    live_slices: int = 0
    live_bias: int = 0
    live_channels: int = 0
    params: int = 0


def _count_as(module: nn.Module) -> str | None:
    rule = rule_for(module)
    return rule.count_as if rule is not None else None


def has_rule(module: nn.Module) -> bool:
    return _count_as(module) is not None or isinstance(module, RNN_TYPES)


def _grouped_liveness(module: nn.Module, weight: Tensor) -> tuple[Tensor, Tensor]:
    """(live output rows, live input columns) per group: bool tensors of shape (groups, out/groups)
    and (groups, in/groups). A row (column) is live when its whole out-slice (in-slice) is not zero."""
    groups = getattr(module, "groups", 1) if weight.dim() > 2 else 1
    nonzero = weight.detach().ne(0).flatten(2).any(2)  # (dim0, dim1): which kernel slices hold a non-zero
    if getattr(module, "transposed", False):  # stored (in, out / groups, ...)
        nonzero = nonzero.reshape(groups, -1, nonzero.shape[1]).transpose(1, 2)
    else:  # stored (out, in / groups, ...)
        nonzero = nonzero.reshape(groups, -1, nonzero.shape[1])
    return nonzero.any(2), nonzero.any(1)


def _own_numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def static_counts(module: nn.Module, skip_zero: bool) -> StaticCounts:
    """Live slices / channels and parameter count of ``module``'s own weights."""
    kind = _count_as(module)
    with torch.no_grad():
        if kind in ("conv", "linear"):
            weight, bias = module.weight, module.bias
            if weight.dim() == 2:
                weight = weight.unsqueeze(-1)
            kernel = prod(weight.shape[2:])
            # one counting pass decides the common case: a dense weight has every channel live
            if skip_zero and int(torch.count_nonzero(weight)) < weight.numel():
                rows, cols = _grouped_liveness(module, weight)
                slices = int((rows.sum(1) * cols.sum(1)).sum())
                live_rows = rows.flatten() if bias is None else rows.flatten() | bias.ne(0)
                live_bias = 0 if bias is None else int(live_rows.sum())
            else:
                slices = weight.shape[0] * weight.shape[1]
                live_bias = 0 if bias is None else bias.numel()
            extra = _own_numel(module) - module.weight.numel() - (0 if bias is None else bias.numel())
            return StaticCounts(live_slices=slices, live_bias=live_bias, params=slices * kernel + live_bias + extra)
        if kind == "batchnorm":
            channels = module.num_features
            if module.affine and skip_zero:
                channels = int((module.weight.ne(0) | module.bias.ne(0)).sum())
            per_channel = 2 if module.affine else 0
            extra = _own_numel(module) - (module.weight.numel() + module.bias.numel() if module.affine else 0)
            return StaticCounts(live_channels=channels, params=channels * per_channel + extra)
    return StaticCounts(params=_own_numel(module))


def _first_tensor(value) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    return None


def call_counts(module: nn.Module, counts: StaticCounts, inputs: tuple, output) -> tuple[int, int]:
    """(MACs, FLOPs) of one call of a module that has a rule.

    FLOPs are paper style: 2 per multiply-accumulate, 1 per bias add, 2 per BN element (the
    affine ``a * x + b`` BN folds to in inference).
    """
    x, y = _first_tensor(inputs), _first_tensor(output)
    if x is None or y is None:
        return 0, 0
    kind = _count_as(module)
    if kind == "conv":
        spatial = module.weight.dim() - 2
        kernel = prod(module.weight.shape[2:])
        out_positions = prod(y.shape[-spatial:])
        # a transposed conv scatters every *input* position through the kernel
        positions = prod(x.shape[-spatial:]) if getattr(module, "transposed", False) else out_positions
        batch = y.shape[0] if y.dim() == spatial + 2 else 1  # convs also accept unbatched input
        macs = counts.live_slices * kernel * positions * batch
        bias_adds = counts.live_bias * out_positions * batch
        return macs, 2 * macs + bias_adds
    if kind == "linear":
        rows = y.numel() // max(module.weight.shape[0], 1)
        macs = counts.live_slices * rows
        return macs, 2 * macs + counts.live_bias * rows
    if kind == "batchnorm":
        per_channel = y.numel() // max(y.shape[1], 1) if y.dim() > 1 else 1
        return 0, 2 * counts.live_channels * per_channel
    if isinstance(module, RNN_TYPES):
        macs = _thop_rnn_ops(module, inputs, output)
        return macs, 2 * macs
    return 0, 0  # ChannelSelection only gathers


class _Tally:
    """Stands in for a module in a thop rule: reads go to the module, ``total_ops`` stays here."""

    def __init__(self, module: nn.Module) -> None:
        self.__dict__["_module"] = module
        self.total_ops = 0

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _thop_rnn_ops(module: nn.Module, inputs: tuple, output) -> int:
    """thop's own count for an RNN module (its rule for the nearest registered base class)."""
    rule = next((_thop_hooks[cls] for cls in type(module).__mro__ if cls in _thop_hooks), None)
    if rule is None:
        return 0
    tally = _Tally(module)
    rule(tally, inputs, output)
    return int(tally.total_ops)
