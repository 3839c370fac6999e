"""Conv subclasses that override ``forward``: run their own forward on meta, and probe whether slicing
their channels is exact (a forward may transform the weight, e.g. standardise each filter)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["own_forward", "slicing_changes"]


def own_forward(module: nn.Module, bases: tuple[type, ...]) -> bool:
    """Does ``module`` override the forward of torch's own class (a subclass that pads, scales...)?
    Its meta output then comes from running that forward, not from the base class's formula."""
    return not any(type(module).forward is base.forward for base in bases)


def slicing_changes(module: _ConvNd) -> str | None:
    """For a conv subclass with its own forward: does slicing input or output channels change what the kept
    channels compute? Probed on a random input (the forward called directly: no hooks run), e.g. weight
    standardisation over each filter's inputs (timm StdConv2d) fails the input probe."""
    weight = module.weight
    if module.groups != 1 or weight.shape[0] < 2 or weight.shape[1] < 2:
        return None
    g = torch.Generator().manual_seed(0)
    size = [max(2 * k, 8) for k in weight.shape[2:]]
    x = torch.randn([1, weight.shape[1], *size], generator=g).to(weight)
    keep_in, keep_out = torch.arange(weight.shape[1] - 1), torch.arange(weight.shape[0] - 1)
    forward = type(module).forward
    try:
        with torch.no_grad():
            zeroed = x.clone()
            zeroed[:, -1] = 0
            full, reference = forward(module, x), forward(module, zeroed)
            narrow = copy.deepcopy(module)
            narrow.weight = nn.Parameter(weight.detach().index_select(1, keep_in.to(weight.device)))
            narrow.in_channels -= 1
            fewer = copy.deepcopy(module)
            fewer.weight = nn.Parameter(weight.detach().index_select(0, keep_out.to(weight.device)))
            if fewer.bias is not None:
                fewer.bias = nn.Parameter(fewer.bias.detach()[:-1])
            fewer.out_channels -= 1
            inputs_ok = torch.allclose(forward(narrow, x[:, :-1]), reference, rtol=1e-4, atol=1e-6)
            outputs_ok = torch.allclose(forward(fewer, x), full[:, :-1], rtol=1e-4, atol=1e-6)
    except Exception as err:  # a forward that cannot run sliced cannot be sliced
        return f"{type(module).__name__}'s own forward fails on a sliced copy ({type(err).__name__})"
    if inputs_ok and outputs_ok:
        return None
    which = "input" if not inputs_ok else "output"
    return (f"{type(module).__name__}'s own forward changes what the kept channels compute when {which} channels "
            "are removed (e.g. weight standardisation)")
