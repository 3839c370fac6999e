"""Per-channel parameters read by the forward itself: layer scale ``x * self.gamma``, ``x + self.beta``.

A ``get_attr`` operand of a product, sum or quotient (a parameter or buffer of the model, not a
constant fx made) whose broadcast puts exactly the result's C channels on dim 1 and size 1 on
every other dim is *per channel*: removing channel c of the data operand is exact when entry c of
the tensor goes too. The labelling leaves a :class:`ParamRecord` (surgery slices the tensor along
``dim`` by ``keep[gids]``) and the result keeps the data operand's channels: a product or ``x / p``
keeps "0 when pruned", a sum clears it (a pruned channel then carries ``beta[c]``).

The same tensor read at two sites couples their channels (one slice serves both). A read that is
not such an operand, a tensor also registered under another name (tied), or one inside a module
the trace keeps whole freezes the channels instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx, nn

from slimbench.core.labels import Chan, Label, gids, with_z
from slimbench.core.rule_base import ParamRecord

__all__ = ["param_operand", "check_params", "slice_params"]


def param_operand(ctx: Any, node: fx.Node, attr: Any, codes: Tensor, kind: str, is_left: bool,
                  value: Tensor) -> Label | None:
    """The label of ``node`` when ``attr`` (the operand without channels codes) is a per-channel
    parameter; None when it is not (the caller then treats the op as opaque)."""
    if not (isinstance(attr, fx.Node) and attr.op == "get_attr" and _is_model_tensor(ctx.gm, attr.target)):
        return None
    if kind == "quotient" and not is_left:  # p / x: a pruned channel divides by 0
        return None
    tensor = ctx.env.get(attr)
    if not isinstance(tensor, Tensor) or tensor.dim() < value.dim() - 1:
        return None
    padded = [1] * (value.dim() - tensor.dim()) + list(tensor.shape)
    if padded[1] != len(codes) or any(size != 1 for i, size in enumerate(padded) if i != 1):
        return None
    rec = ParamRecord(attr.target, tensor.dim() - value.dim() + 1, gids(codes).numpy().copy())
    prev = ctx.params.setdefault(rec.target, rec)
    if prev is not rec:
        if prev.dim == rec.dim and len(prev.gids) == len(rec.gids):
            ctx.union_gids(prev.gids, rec.gids)  # one tensor, one slice: the sites' channels go together
        else:
            ctx.freeze_gids([prev.gids, rec.gids], f"parameter {rec.target!r} is read per channel along "
                                                   "different dims")
    ctx.param_reads.add((attr, node))
    return Chan(with_z(codes, False)) if kind == "sum" else Chan(codes)


def check_params(ctx: Any) -> None:
    """Freeze the channels of recorded parameters that are also read in a way no record follows."""
    if not ctx.params:
        return
    names = Counter(id(t) for _, t in (*ctx.gm.named_parameters(remove_duplicate=False),
                                       *ctx.gm.named_buffers(remove_duplicate=False)))
    leaves = [n.target for n in ctx.gm.graph.nodes if n.op == "call_module"]
    for node in ctx.gm.graph.nodes:
        if node.op == "get_attr" and node.target in ctx.params:
            for user in node.users:
                if (node, user) not in ctx.param_reads:
                    ctx.freeze_gids([ctx.params[node.target].gids],
                                    f"parameter {node.target!r} is also read by {user.name!r}, not per channel")
    for target, rec in ctx.params.items():
        if names[id(ctx.gm.get_parameter(target) if _is_param(ctx.gm, target) else ctx.gm.get_buffer(target))] > 1:
            ctx.freeze_gids([rec.gids], f"parameter {target!r} is shared with another module")
        inside = next((leaf for leaf in leaves if target.startswith(f"{leaf}.")), None)
        if inside is not None:
            ctx.freeze_gids([rec.gids], f"parameter {target!r} is also used by module {inside!r}")


def _owner(gm: fx.GraphModule, target: str) -> tuple[Any, str]:
    prefix, _, field = target.rpartition(".")
    try:
        return (gm.get_submodule(prefix) if prefix else gm), field
    except AttributeError:
        return None, field


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    owner, field = _owner(gm, target)
    return owner is not None and field in owner._parameters


def _is_model_tensor(gm: fx.GraphModule, target: str) -> bool:
    """A parameter or buffer of the model (fx's own ``_tensor_constant*`` at the root are not)."""
    owner, field = _owner(gm, target)
    if owner is None or ("." not in target and field.startswith("_tensor_constant")):
        return False
    return field in owner._parameters or field in owner._buffers


def slice_params(root: nn.Module, params: dict[str, ParamRecord], keep: np.ndarray) -> None:
    """Remove, in place on ``root``, the pruned channels of every recorded parameter or buffer."""
    for target, rec in params.items():
        mask = keep[rec.gids]
        if mask.all():
            continue
        owner, field = _owner(root, target)
        old = getattr(owner, field)
        index = torch.from_numpy(np.flatnonzero(mask)).to(old.device)
        new = old.detach().index_select(rec.dim, index).clone()
        if field in owner._parameters:
            owner._parameters[field] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            owner._buffers[field] = new
