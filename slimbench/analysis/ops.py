"""How each traced op moves channels: one small table, one entry per op (the fvcore shape).

An op falls into one of a few kinds:

- ``pointwise``: output channel i is input channel i. The flag says whether a zero input stays
  zero (ReLU, SiLU, pooling: yes; sigmoid: no), which decides whether a pruned channel still
  emits exactly 0 downstream.
- ``sum`` / ``product`` / ``quotient``: elementwise with broadcasting; operands' channels are
  joined (residual coupling, squeeze-excitation scaling).
- ``cat``: channels concatenated with offsets.
- ``reshape``: views, transposes, flatten, chunk, getitem: mapped exactly by replaying the op on
  the label tensor.
- ``reduce``: mean / sum / amax over non-channel dims.
- ``pad``: F.pad, spatial or on channels.
- ``shape``: returns sizes, not channels.

Pointwise *modules* are channel rules (``slimbench.core.rules``). ``handlers.py`` turns these
tables into the op -> handler table. Anything not in it is opaque: its channels are frozen,
never guessed.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from slimbench.core.rules import rule_for

try:  # wrapped by torchvision for fx, so it shows up as a call_function node
    from torchvision.ops.stochastic_depth import stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency
    stochastic_depth = None

POINTWISE_FUNCTIONS: dict[object, bool] = {
    torch.relu: True, torch.relu_: True, F.relu: True, F.relu6: True, F.leaky_relu: True,
    F.elu: True, F.silu: True, F.hardswish: True, F.gelu: True, F.mish: True, torch.tanh: True,
    F.hardtanh: True, F.dropout: True, F.dropout1d: True, F.dropout2d: True, F.dropout3d: True,
    F.max_pool1d: True, F.max_pool2d: True, F.max_pool3d: True, F.avg_pool1d: True,
    F.avg_pool2d: True, F.avg_pool3d: True, F.adaptive_avg_pool1d: True,
    F.adaptive_avg_pool2d: True, F.adaptive_avg_pool3d: True, F.adaptive_max_pool1d: True,
    F.adaptive_max_pool2d: True, F.interpolate: True, torch.clone: True, operator.neg: True,
    torch.neg: True, torch.sigmoid: False, F.sigmoid: False, F.hardsigmoid: False,
    torch.exp: False, F.softplus: False,
}
if stochastic_depth is not None:
    POINTWISE_FUNCTIONS[stochastic_depth] = True

POINTWISE_METHODS: dict[str, bool] = {
    "relu": True, "relu_": True, "tanh": True, "clone": True, "contiguous": True, "detach": True,
    "neg": True, "float": True, "double": True, "to": True, "type_as": True, "sigmoid": False,
    "sigmoid_": False, "exp": False,
}

BINARY: dict[object, str] = {
    operator.add: "sum", operator.iadd: "sum", torch.add: "sum", operator.sub: "sum",
    operator.isub: "sum", torch.sub: "sum", operator.mul: "product", operator.imul: "product",
    torch.mul: "product", operator.truediv: "quotient", operator.itruediv: "quotient",
    torch.div: "quotient", torch.true_divide: "quotient",
}
BINARY_METHODS: dict[str, str] = {
    "add": "sum", "add_": "sum", "sub": "sum", "sub_": "sum", "mul": "product", "mul_": "product",
    "div": "quotient", "div_": "quotient",
}
SUBTRACTIONS = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}

CAT = {torch.cat, torch.concat, torch.concatenate}

RESHAPE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
    torch.chunk, torch.split, torch.narrow, torch.swapaxes, torch.movedim, operator.getitem,
}
RESHAPE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "chunk", "split",
    "narrow", "swapaxes", "movedim", "t", "unflatten", "__getitem__", "expand", "expand_as",
}
FLATTENS = {torch.flatten, "flatten", nn.Flatten}
# reshapes that only reorder dims: channels they move off dim 1 are not followed (a Linear over the last dim)
MOVES_DIMS = {torch.permute, torch.transpose, torch.swapaxes, torch.movedim, "permute", "transpose", "swapaxes",
              "movedim", "t"}
SHAPE_METHODS = {"size", "dim", "numel"}

REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}

PAD_FUNCTIONS = {F.pad}


def pointwise_zero_preserving(module_or_target) -> bool | None:
    """Whether a pointwise op keeps 0 at 0; None when it is not a known pointwise op."""
    if isinstance(module_or_target, nn.Module):
        rule = rule_for(module_or_target)
        return rule.keeps_zero if rule is not None else None
    if isinstance(module_or_target, str):
        return POINTWISE_METHODS.get(module_or_target)
    try:
        return POINTWISE_FUNCTIONS.get(module_or_target)
    except TypeError:  # unhashable target
        return None
