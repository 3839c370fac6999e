"""Weight-aware counting rules for the modules whose cost depends on which weights are live.

A module's rule is its channel rule in ``slimbench.core.rules`` (looked up along the MRO: plain
thop looks up ``type(m)`` exactly, so a subclass of ``nn.Conv2d`` counts 0 there); its
``count_as`` says which counting below applies (``conv``, ``linear``, ``batchnorm``, ``gather``),
so a user's module registered with ``ConvRule`` is counted as a conv. Each rule has two halves:
:func:`static_counts` reads the weights once, before the forward pass, and :func:`call_counts`
turns one call's input/output shapes into MACs and FLOPs.

Live weights (``skip_zero=True``):

- conv / linear: a kernel slice ``weight[o, i]`` (for linear, one scalar) is live when any of its
  entries is non-zero; an output channel is live when its row has a live slice or a non-zero
  bias, and its bias entry then counts.
- batch norm (``MaskedBatchNorm`` included): a channel is live unless both gamma and beta are 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor, nn

from slimbench.core.rules import rule_for

__all__ = ["StaticCounts", "has_rule", "static_counts", "call_counts"]


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
    return _count_as(module) is not None


def _live_slices(weight: Tensor) -> Tensor:
    """Bool (out, in) map: which kernel slices hold a non-zero entry."""
    flat = weight.detach().reshape(weight.shape[0] * weight.shape[1], -1)
    live = flat.ne(0) if flat.shape[1] == 1 else flat.ne(0).any(1)
    return live.reshape(weight.shape[0], weight.shape[1])


def _live_outputs(module: nn.Module, live: Tensor) -> Tensor:
    """Which output channels have a live slice (a transposed conv stores (in, out / groups, ...))."""
    if getattr(module, "transposed", False):
        groups = module.groups
        return live.reshape(groups, live.shape[0] // groups, live.shape[1]).any(1).flatten()
    return live.any(1)


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
            # one counting pass decides the common case: a dense weight has every slice live
            if skip_zero and int(torch.count_nonzero(weight)) < weight.numel():
                live = _live_slices(weight)
                slices = int(live.sum())
                live_rows = _live_outputs(module, live)
                live_rows = live_rows if bias is None else live_rows | bias.ne(0)
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
    return 0, 0  # ChannelSelection only gathers
