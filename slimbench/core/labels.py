"""Channel labels: which channel of which space each position of a tensor's dim 1 carries.

Every traced tensor gets a label tensor. A *code* packs a global channel id and one bit:
``code = gid * 2 + z`` where ``z`` says "this value is exactly zero when the channel's class is
pruned" (set by a BN whose gamma and beta are zeroed, kept through ReLU-like ops and products).

A label is either a ``Chan`` (1-D codes along dim 1; constant over the other dims, the common
case) or a ``Full`` (codes for every element), needed only while a reshape or transpose moves
channels around (channel shuffle); ``Full`` collapses back to ``Chan`` whenever it can.

Either way a label spans all of dim 1: a ``Chan`` has one code per position of dim 1 and a
``Full`` keeps dim 1 at its length, even where the codes are constant along it (``x[:, 0]`` on
(batch, tokens, features) has ``features`` positions on dim 1, each with token 0's code, not one).
Rules read ``len(codes)`` as the module's input channel count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Chan:
    codes: Tensor  # int64, shape (C,)

    def full(self, shape: torch.Size) -> Tensor:
        view = [1] * len(shape)
        view[1] = -1
        return self.codes.view(view).expand(shape)


@dataclass(frozen=True)
class Full:
    codes: Tensor  # int64, same number of dims as the value; size-1 dims where codes are constant (never dim 1)


Label = Chan | Full


def gids(codes: Tensor) -> Tensor:
    return codes >> 1


def zbit(codes: Tensor) -> Tensor:
    return codes & 1


def with_z(codes: Tensor, z: bool | Tensor) -> Tensor:
    if isinstance(z, bool):
        return (codes & ~1) | int(z)
    return (codes & ~1) | z.to(codes.dtype)


def as_full(label: Label, shape: torch.Size) -> Tensor:
    """Codes broadcast to the value's shape (a view: nothing is materialised)."""
    return label.full(shape) if isinstance(label, Chan) else label.codes.expand(shape)


def compact(codes: Tensor) -> Tensor:
    """Shrink every dim but dim 1 along which the codes do not change to size 1 (dim 1 keeps its length:
    it is the channel count every rule reads)."""
    for dim in range(codes.dim()):
        if dim != 1 and codes.shape[dim] > 1 and bool((codes == codes.narrow(dim, 0, 1)).all()):
            codes = codes.narrow(dim, 0, 1)
    return codes


def collapse(codes: Tensor) -> Label:
    """``Chan`` when codes are constant over every dim but 1, else a compact ``Full``."""
    codes = compact(codes)
    if codes.dim() >= 2 and codes.numel() == codes.shape[1]:
        return Chan(codes.reshape(-1).clone())
    return Full(codes.clone())


def channel_codes(label: Label | None) -> Tensor | None:
    """Codes along dim 1, or None when dim 1 does not hold whole channels."""
    if isinstance(label, Chan):
        return label.codes
    if isinstance(label, Full):
        collapsed = collapse(label.codes)
        return collapsed.codes if isinstance(collapsed, Chan) else None
    return None


def clear_z(label: Label) -> Label:
    """The same channels, no longer known to be exactly 0 when pruned."""
    return Chan(with_z(label.codes, False)) if isinstance(label, Chan) else Full(with_z(label.codes, False))
