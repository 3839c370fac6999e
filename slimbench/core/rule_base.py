"""What a channel rule is: the base class, the records it leaves behind, a generic meta run.

A :class:`ChannelRule` carries everything the pipeline needs about one module type:

- ``label(ctx, node, module, value)``: how the module moves channels during labelling. ``ctx`` is
  the labelling interpreter (``slimbench.analysis.interpreter``); the methods a rule may call on
  it are listed in :class:`LabelContext`.
- ``meta(module, args, kwargs)``: the module's output on meta tensors (shapes only, no state
  touched); used by tracing and labelling.
- ``slice(module, rec, keep)`` / ``zero(module, rec, keep)``: surgery, given the record the
  labelling left (:class:`ConvRecord` or :class:`BNRecord`) and ``keep`` (bool per channel id). A
  per-channel parameter the forward reads itself (layer scale) leaves a :class:`ParamRecord`.
- ``leaf``: always a leaf of the fx trace, whatever the subclass (conv, linear, BN: yes).
- ``keeps_zero``: for pointwise modules, whether 0 stays 0 (None: not pointwise).
- ``count_as``: how ``thop_ext`` counts it (``"conv"``, ``"linear"``, ``"batchnorm"``,
  ``"gather"``, or None for thop's own rules).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, fx, nn

from slimbench.core.labels import Label

__all__ = ["ChannelRule", "ConvRecord", "BNRecord", "ParamRecord", "LabelContext", "generic_meta"]


@dataclass
class ConvRecord:
    """A conv or linear module and how its channels map to channel ids (gids)."""

    name: str
    # "dense": reads in_gids, creates out space | "joined": out = in (depthwise / grouped; a depthwise
    # multiplier k repeats each in gid k times) | "grouped": reads in_gids group-wise (kept whole), creates
    # an out space pruned equally per group | "fixed"
    role: str
    in_gids: np.ndarray | None = None
    out_gids: np.ndarray | None = None
    group_size: int = 1  # channels per conv group for "joined", output channels per group for "grouped"
    groups: int = 1
    per_position: int = 1  # kernel size x output spatial size (x 1 for linear)
    fixed_macs: int = 0
    calls: int = 1  # call sites in one forward (all coupled)


@dataclass
class BNRecord:
    name: str
    gids: np.ndarray  # the classes its channels belong to (its output space for a selector)
    selector: bool = False
    in_gids: np.ndarray | None = None  # selectors only: the channel each of its channels reads
    all_in_gids: np.ndarray | None = None  # a MaskedBatchNorm: every channel of the tensor it indexes
    calls: int = 1  # call sites in one forward (all coupled)


@dataclass
class ParamRecord:
    """A parameter or buffer the forward reads per channel (``x * self.gamma``, ``x + self.beta``)."""

    target: str  # its qualified name in the model
    dim: int  # the dim of the tensor that holds the channels
    gids: np.ndarray  # the channel id of each of its entries along ``dim``


class LabelContext(Protocol):
    """What the labelling interpreter offers a rule."""

    select: bool  # residual="select": BNs reading a shared tensor may become selectors

    def input_label(self, node: fx.Node) -> Label | None: ...
    def new_space(self, size: int, kind: str, owner: str, z: bool = False, frozen: str | None = None) -> Tensor: ...
    def consume(self, codes: Tensor, by: str) -> None: ...
    def freeze(self, label: Any, reason: str) -> None: ...
    def opaque(self, node: fx.Node, value: Any, reason: str) -> Any: ...
    def record_conv(self, node: fx.Node, rec: ConvRecord) -> None: ...
    def record_bn(self, node: fx.Node, rec: BNRecord) -> None: ...
    def reads_shared(self, node: fx.Node) -> bool: ...
    def private(self, node: fx.Node) -> bool: ...
    def pointwise_label(self, node: fx.Node, value: Any, keeps_zero: bool) -> Any: ...
    def reshape_label(self, node: fx.Node, value: Any, flatten: bool) -> Any: ...


class ChannelRule:
    """Default behaviour: an opaque module (channels frozen), run generically on meta tensors."""

    leaf: bool = True
    keeps_zero: bool | None = None
    count_as: str | None = None
    flattens: bool = False

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        return ctx.opaque(node, value, f"{node.target} ({type(module).__name__}) is opaque to slimbench")

    def meta(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        return generic_meta(module, args, kwargs)

    def reads_all_channels(self, module: nn.Module) -> bool:
        """Does every output read every input channel (a dense conv / linear)?"""
        return False

    def slice(self, module: nn.Module, rec: Any, keep: np.ndarray) -> None:
        """Remove, in place, the channels of ``module`` where ``keep`` (per gid) is False."""

    def zero(self, module: nn.Module, rec: Any, keep: np.ndarray) -> None:
        """Set to 0, in place, the weights that ``slice`` would remove."""


def generic_meta(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """Run a module on meta tensors without touching its parameters or state."""
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
