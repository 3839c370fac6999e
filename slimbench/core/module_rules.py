"""The built-in channel rules: conv-like, linear, batch norm, already-pruned modules, flatten, pointwise.

Registered for their module types in ``slimbench.core.rules``; see ``rule_base`` for what each
method is for. ``ConvRule`` reads only ``weight`` (out, in / groups, *kernel), ``bias`` and an
optional ``groups`` attribute, so it also serves a user's own conv-like module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn
from torch.nn.modules.conv import _ConvNd

from slimbench.core.conv_probe import own_forward as _own_forward
from slimbench.core.conv_probe import slicing_changes as _slicing_changes
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.labels import Chan, channel_codes, gids, with_z, zbit
from slimbench.core.modules import MaskedBatchNorm
from slimbench.core.rule_base import BNRecord, ChannelRule, ConvRecord, LabelContext, generic_meta

__all__ = ["ConvRule", "LinearRule", "BatchNormRule", "AlreadyPrunedRule", "MaskedBatchNormRule",
           "FlattenRule", "PointwiseRule"]


def _index(mask: np.ndarray, device) -> Tensor:
    return torch.as_tensor(np.flatnonzero(mask), dtype=torch.long, device=device)


def _param(value: Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(value.detach().clone(), requires_grad=like.requires_grad)


def _input_codes(ctx: LabelContext, node: fx.Node, channels: int | None = None) -> Tensor | None:
    """The input's codes along dim 1; a count other than the ``channels`` the module reads is never guessed
    at (the interpreter freezes the module's channels with this reason)."""
    codes = channel_codes(ctx.input_label(node))
    if codes is not None and channels is not None and len(codes) != channels:
        raise ValueError(f"{node.target}: {len(codes)} channel labels for its {channels} input channels")
    return codes


class _WeightedRule(ChannelRule):
    """Shared surgery of modules with a ``weight`` whose dims 0 / 1 are output / input channels."""

    def set_sizes(self, module: nn.Module, cin: int, cout: int) -> None:
        if hasattr(module, "in_channels"):
            module.in_channels = cin
        if hasattr(module, "out_channels"):
            module.out_channels = cout

    def slice(self, module: nn.Module, rec: ConvRecord, keep: np.ndarray) -> None:
        weight = module.weight
        device = weight.device
        if rec.role == "dense":
            out_idx, in_idx = _index(keep[rec.out_gids], device), _index(keep[rec.in_gids], device)
            new_weight = weight.index_select(0, out_idx).index_select(1, in_idx)
            self.set_sizes(module, len(in_idx), len(out_idx))
        elif rec.role == "joined":
            kept = keep[rec.out_gids]
            out_idx = _index(kept, device)
            if rec.group_size == 1:  # depthwise; with a multiplier, out_gids repeat each input's k times
                new_weight, groups = weight.index_select(0, out_idx), int(keep[rec.in_gids].sum())
            else:
                blocks = kept.reshape(rec.groups, rec.group_size)
                counts = blocks.sum(1)
                if (counts != counts[0]).any():
                    raise ValueError(f"grouped conv {rec.name!r} would keep unequal channel counts per group")
                rows, per = weight.index_select(0, out_idx), int(counts[0])
                pieces = [rows[g * per:(g + 1) * per].index_select(1, _index(blocks[g], device))
                          for g in range(rec.groups)]
                new_weight, groups = torch.cat(pieces), rec.groups
            self.set_sizes(module, groups if rec.group_size == 1 else len(out_idx), len(out_idx))
            module.groups = groups
        elif rec.role == "grouped":  # outputs only, the same number in every group: inputs and groups stay
            kept = keep[rec.out_gids]
            counts = kept.reshape(rec.groups, rec.group_size).sum(1)
            if (counts != counts[0]).any():
                raise ValueError(f"grouped conv {rec.name!r} would keep unequal output counts per group")
            out_idx = _index(kept, device)
            new_weight = weight.index_select(0, out_idx)
            self.set_sizes(module, len(rec.in_gids), len(out_idx))
        else:
            return
        module.weight = _param(new_weight, weight)
        if getattr(module, "bias", None) is not None:
            module.bias = _param(module.bias.index_select(0, out_idx), module.bias)

    def zero(self, module: nn.Module, rec: ConvRecord, keep: np.ndarray) -> None:
        if rec.role == "fixed":
            return
        weight, bias = module.weight, getattr(module, "bias", None)
        out_drop = _index(~keep[rec.out_gids], weight.device)
        weight.index_fill_(0, out_drop, 0)
        if bias is not None:
            bias.index_fill_(0, out_drop, 0)
        if rec.role == "dense":
            weight.index_fill_(1, _index(~keep[rec.in_gids], weight.device), 0)
        elif rec.role == "joined" and rec.group_size > 1:  # grouped: drop pruned inputs inside each group too
            blocks = keep[rec.out_gids].reshape(rec.groups, rec.group_size)
            for g, block in enumerate(blocks):
                rows = weight[g * rec.group_size:(g + 1) * rec.group_size]
                rows.index_fill_(1, _index(~block, weight.device), 0)


class ConvRule(_WeightedRule):
    """Convolutions: dense (groups == 1), depthwise (also with a channel multiplier) / grouped with in == out
    (joined), other grouped convs (an expanding grouped conv): inputs kept, outputs pruned equally per group."""

    count_as = "conv"

    def reads_all_channels(self, module: nn.Module) -> bool:
        return getattr(module, "groups", 1) == 1

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        g = getattr(module, "groups", 1)
        cout, cin = module.weight.shape[0], module.weight.shape[1] * g
        if getattr(module, "transposed", False) or not isinstance(value, Tensor):
            return super().label(ctx, node, module, value)
        codes = _input_codes(ctx, node, cin)
        if codes is None:
            return super().label(ctx, node, module, value)
        name = node.target
        per_position = math.prod(module.weight.shape[2:]) * math.prod(value.shape[2:])
        if isinstance(module, _ConvNd) and _own_forward(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            why = _slicing_changes(module)  # a module registered with this rule by hand is taken at its word
            if why is not None:
                return ctx.opaque(node, value, f"{name}: {why}")
        if g == 1:
            ctx.consume(codes, name)
            out = ctx.new_space(cout, "conv", name)
            ctx.record_conv(node, ConvRecord(name, "dense", gids(codes).numpy(), gids(out).numpy(),
                                             per_position=per_position))
            return Chan(out)
        if cin == cout:  # depthwise, or grouped with as many outputs as inputs per group
            out = with_z(codes, zbit(codes).bool() & (getattr(module, "bias", None) is None))
            ctx.record_conv(node, ConvRecord(name, "joined", gids(codes).numpy(), gids(codes).numpy(),
                                             group_size=cin // g, groups=g, per_position=per_position))
            return Chan(out)
        if cin == g and cout % g == 0:  # depthwise with a channel multiplier: output j reads input j // k alone
            rep = codes.repeat_interleave(cout // g)
            out = with_z(rep, zbit(rep).bool() & (getattr(module, "bias", None) is None))
            ctx.record_conv(node, ConvRecord(name, "joined", gids(codes).numpy(), gids(rep).numpy(),
                                             group_size=1, groups=g, per_position=per_position))
            return Chan(out)
        if cout % g:  # not a conv torch builds; never guessed at
            reason = f"{name} has {cout} outputs in {g} groups"
            ctx.freeze(Chan(codes), reason)
            ctx.record_conv(node, ConvRecord(name, "fixed", fixed_macs=cout * (cin // g) * per_position))
            return Chan(ctx.new_space(cout, "opaque", name, frozen=reason))
        ctx.freeze(Chan(codes), f"{name} is a grouped conv with {cout // g} outputs per {cin // g} inputs: "
                                "its inputs stay")
        out = ctx.new_space(cout, "conv", name)
        ctx.record_conv(node, ConvRecord(name, "grouped", gids(codes).numpy(), gids(out).numpy(),
                                         group_size=cout // g, groups=g, per_position=per_position))
        return Chan(out)

    def meta(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if not isinstance(module, _ConvNd) or module.transposed:
            return generic_meta(module, args, kwargs)
        x = args[0] if args else None
        if x.dim() < 2 or x.shape[1] != module.in_channels:
            raise ValueError(f"{type(module).__name__} expects {module.in_channels} input channels, "
                             f"got a tensor of shape {tuple(x.shape)}")
        if _own_forward(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):  # e.g. "same" padding computed from x
            return generic_meta(module, args, kwargs)
        bias = module.bias.to("meta") if module.bias is not None else None
        return module._conv_forward(x, module.weight.to("meta"), bias)


class LinearRule(_WeightedRule):
    """Linear layers on 2-D inputs: read every input feature, create a space of out-features."""

    count_as = "linear"

    def reads_all_channels(self, module: nn.Module) -> bool:
        return True

    def set_sizes(self, module: nn.Module, cin: int, cout: int) -> None:
        module.in_features, module.out_features = cin, cout

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        if not isinstance(value, Tensor) or value.dim() != 2:
            return super().label(ctx, node, module, value)
        codes = _input_codes(ctx, node, module.weight.shape[1])
        if codes is None:
            return super().label(ctx, node, module, value)
        name = node.target
        ctx.consume(codes, name)
        out = ctx.new_space(module.weight.shape[0], "linear", name)
        ctx.record_conv(node, ConvRecord(name, "dense", gids(codes).numpy(), gids(out).numpy()))
        return Chan(out)

    def meta(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if _own_forward(module, (nn.Linear,)):
            return generic_meta(module, args, kwargs)
        bias = module.bias.to("meta") if module.bias is not None else None
        return nn.functional.linear(args[0], module.weight.to("meta"), bias)


class BatchNormRule(ChannelRule):
    """Batch norms: the importance sources; their output is exactly 0 on a pruned channel."""

    count_as = "batchnorm"

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        codes = _input_codes(ctx, node, getattr(module, "num_features", None))
        if codes is None:
            return super().label(ctx, node, module, value)
        name = node.target
        if ctx.select and ctx.reads_shared(node.args[0]) and ctx.private(node):
            ctx.consume(codes, name)
            out = ctx.new_space(module.num_features, "selector", name, z=True)
            ctx.record_bn(node, BNRecord(name, gids(out).numpy(), True, gids(codes).numpy()))
            return Chan(out)
        ctx.record_bn(node, BNRecord(name, gids(codes).numpy()))
        return Chan(with_z(codes, True))

    def meta(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        x = args[0]
        if x.dim() < 2 or x.shape[1] != module.num_features:
            raise ValueError(f"expected {module.num_features} channels, got input of shape {tuple(x.shape)}")
        return torch.empty_like(x)

    def slice(self, module: nn.Module, rec: BNRecord, keep: np.ndarray) -> None:
        bn = module
        idx = _index(keep[rec.gids], bn.running_mean.device if bn.running_mean is not None else "cpu")
        if bn.affine:
            bn.weight = _param(bn.weight.index_select(0, idx), bn.weight)
            bn.bias = _param(bn.bias.index_select(0, idx), bn.bias)
        if bn.track_running_stats:
            bn.running_mean = bn.running_mean.index_select(0, idx)
            bn.running_var = bn.running_var.index_select(0, idx)
        bn.num_features = len(idx)

    def zero(self, module: nn.Module, rec: BNRecord, keep: np.ndarray) -> None:
        if module.affine:
            idx = _index(~keep[rec.gids], module.weight.device)
            module.weight.index_fill_(0, idx, 0)
            module.bias.index_fill_(0, idx, 0)


class AlreadyPrunedRule(ChannelRule):
    """Modules surgery inserted (``ChannelSelection``): channels frozen, not pruned twice."""

    count_as = "gather"

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        return ctx.opaque(node, value, f"{node.target} is an already-pruned {type(module).__name__}")


class MaskedBatchNormRule(BatchNormRule):
    """A ``MaskedBatchNorm`` (an earlier pass's selection): always a selector. Its channel j reads input
    channel ``index[j]`` and is its own BN channel, so an already pruned model can be pruned again."""

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        if not isinstance(module, MaskedBatchNorm):
            return ChannelRule.label(self, ctx, node, module, value)
        codes = _input_codes(ctx, node, module.in_channels)
        if codes is None:
            return ChannelRule.label(self, ctx, node, module, value)
        name = node.target
        read = codes[module.index.cpu()]
        ctx.consume(read, name)
        out = ctx.new_space(module.num_features, "selector", name, z=True)
        ctx.record_bn(node, BNRecord(name, gids(out).numpy(), True, gids(read).numpy(),
                                     all_in_gids=gids(codes).numpy()))
        return Chan(out)

    def meta(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        assert isinstance(module, MaskedBatchNorm)
        return args[0].index_select(1, module.index.to("meta"))

    def slice(self, module: nn.Module, rec: BNRecord, keep: np.ndarray) -> None:
        assert isinstance(module, MaskedBatchNorm)
        if rec.all_in_gids is None:
            raise SlimbenchValueError(f"{rec.name}: a MaskedBatchNorm recorded without its input channels")
        inputs = keep[rec.all_in_gids]
        index = module.index.cpu().numpy()[keep[rec.gids]]
        if not inputs[index].all():
            raise SlimbenchValueError(
                f"{rec.name}: the plan keeps a channel of this MaskedBatchNorm whose input is removed")
        super().slice(module, rec, keep)
        position = np.cumsum(inputs) - 1
        module.index = torch.as_tensor(position[index], dtype=module.index.dtype, device=module.index.device)
        module.in_channels = int(inputs.sum())


class FlattenRule(ChannelRule):
    """``nn.Flatten``: channels repeated over the flattened positions (a linear reads them all)."""

    leaf = False
    flattens = True

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        return ctx.reshape_label(node, value, flatten=True)


class PointwiseRule(ChannelRule):
    """Output channel i is input channel i (activations, pooling, dropout, identity)."""

    leaf = False

    def __init__(self, keeps_zero: bool) -> None:
        self.keeps_zero = keeps_zero

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        if ctx.input_label(node) is None:
            return super().label(ctx, node, module, value)
        return ctx.pointwise_label(node, value, self.keeps_zero)

    def __repr__(self) -> str:
        return f"PointwiseRule(keeps_zero={self.keeps_zero})"


class IndexSelectionRule(ChannelRule):
    """A user's module that selects channels by a 0/1 parameter ``indexes`` (network slimming's official
    ``channel_selection``: ``x[:, np.argwhere(indexes)]``). Recognised only where its forward is proven
    on probe inputs to be ``x[:, nonzero(indexes)]``; with every index 1 it is the identity on the
    channels it reads, so they stay prunable and surgery slices ``indexes`` with them. With zeros in
    ``indexes`` (already pruned), or a forward that does something else, it is opaque."""

    count_as = "gather"
    keeps_zero = True  # the identity on what it reads (only proven instances are labelled so)

    @staticmethod
    def matches(module: nn.Module) -> bool:
        params = dict(module.named_parameters(recurse=False))
        if set(params) != {"indexes"} or next(module.children(), None) is not None or \
                next(module.buffers(recurse=False), None) is not None:
            return False
        idx = params["indexes"].detach()
        return idx.dim() == 1 and idx.numel() > 0 and bool(((idx == 0) | (idx == 1)).all())

    @staticmethod
    def proven(module: nn.Module, channels: int) -> bool:
        """Does the forward compute ``x[:, nonzero(indexes)]`` on probes (all ones, and a mixed mask)?"""
        idx = module.indexes.detach()
        if idx.numel() != channels:
            return False
        mixed = torch.ones_like(idx)
        mixed[: max(1, channels // 2)] = 0
        if channels == 1:
            mixed = torch.ones_like(idx)
        x = torch.arange(2 * channels * 9, dtype=torch.float32, device=idx.device).reshape(2, channels, 3, 3)
        for probe in (torch.ones_like(idx), mixed):
            try:
                out = torch.func.functional_call(module, {"indexes": probe.clone()}, (x.to(idx.dtype),))
            except Exception:
                return False
            expected = x.to(idx.dtype)[:, probe.nonzero().flatten()]
            if not isinstance(out, Tensor) or out.shape != expected.shape or not torch.equal(out, expected):
                return False
        return True

    def label(self, ctx: LabelContext, node: fx.Node, module: nn.Module, value: Any) -> Any:
        name = node.target
        if not isinstance(value, Tensor) or value.dim() < 2:
            return super().label(ctx, node, module, value)
        codes = _input_codes(ctx, node, module.indexes.numel())
        if codes is None:
            return super().label(ctx, node, module, value)
        if not bool((module.indexes.detach() != 0).all()):
            return ctx.opaque(node, value, f"{name} ({type(module).__name__}) already selects "
                              f"{int((module.indexes != 0).sum())} of {module.indexes.numel()} channels")
        if not self.proven(module, value.shape[1]):
            return ctx.opaque(node, value, f"{name} ({type(module).__name__}) has a 0/1 parameter 'indexes' but "
                              "its forward is not x[:, nonzero(indexes)] on probe inputs")
        channels = gids(codes).numpy()
        ctx.record_conv(node, ConvRecord(name, "joined", channels, channels, group_size=1,
                                         groups=len(channels), per_position=0))
        return ctx.pointwise_label(node, value, True)

    def slice(self, module: nn.Module, rec: Any, keep: np.ndarray) -> None:
        mask = torch.from_numpy(np.asarray(keep[rec.out_gids], dtype=bool)).to(module.indexes.device)
        module.indexes = nn.Parameter(module.indexes.detach()[mask].clone(),
                                      requires_grad=module.indexes.requires_grad)

    def zero(self, module: nn.Module, rec: Any, keep: np.ndarray) -> None:
        """Nothing: zeroing an index would drop the channel (shapes must stay)."""
