"""Small modules that pruning surgery inserts into a model."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ChannelSelection", "MaskedBatchNorm", "BATCHNORM_TYPES"]

BATCHNORM_TYPES = (_BatchNorm,)


def _as_index(index: Tensor | list[int]) -> Tensor:
    index = torch.as_tensor(index, dtype=torch.long).flatten()
    if index.numel() == 0:
        raise ValueError("a channel selection must keep at least one channel")
    return index


class ChannelSelection(nn.Module):
    """Keeps the input channels listed in ``index`` (dim 1), in that order."""

    def __init__(self, index: Tensor | list[int], in_channels: int) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.register_buffer("index", _as_index(index))

    @property
    def out_channels(self) -> int:
        return int(self.index.numel())

    def forward(self, x: Tensor) -> Tensor:
        return x.index_select(1, self.index)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


class MaskedBatchNorm(_BatchNorm):
    """Batch norm over a selection of the input channels.

    The selection happens *before* normalisation, so only the kept channels are read and
    normalised: a pre-activation BN that reads a residual sum or a concatenation can thus drop
    channels without touching the tensor it reads. Parameters have ``len(index)`` entries.
    """

    def __init__(self, index: Tensor | list[int], in_channels: int, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        index = _as_index(index)
        super().__init__(index.numel(), eps, momentum, affine, track_running_stats)
        self.in_channels = int(in_channels)
        self.register_buffer("index", index)

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"MaskedBatchNorm expects at least 2-D input, got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.index_select(1, self.index))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, keep: Tensor, in_keep: Tensor | None = None) -> MaskedBatchNorm:
        """A MaskedBatchNorm that keeps the channels of ``bn`` where ``keep`` is True.

        ``in_keep`` says which of ``bn``'s input channels still exist in the pruned model (the
        index is taken relative to those), when the tensor it reads was itself pruned.
        """
        keep = keep.to(torch.bool)
        in_keep = torch.ones_like(keep) if in_keep is None else in_keep.to(torch.bool)
        if (keep & ~in_keep).any():
            raise ValueError("MaskedBatchNorm cannot keep a channel that its input no longer has")
        position = torch.cumsum(in_keep.long(), 0) - 1
        new = cls(position[keep], int(in_keep.sum()), bn.eps, bn.momentum, bn.affine,
                  bn.track_running_stats)
        like = bn.weight if bn.affine else bn.running_mean
        if like is not None:
            new = new.to(device=like.device, dtype=like.dtype)
        with torch.no_grad():
            if bn.affine:
                new.weight.copy_(bn.weight[keep])
                new.bias.copy_(bn.bias[keep])
            if bn.track_running_stats:
                new.running_mean.copy_(bn.running_mean[keep])
                new.running_var.copy_(bn.running_var[keep])
                new.num_batches_tracked.copy_(bn.num_batches_tracked)
        new.train(bn.training)
        return new

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.num_features}, " + super().extra_repr()
