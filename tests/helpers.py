"""Shared test utilities: realistic BN statistics and the equivalence contract."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import slimbench
from slimbench.core.counting import conv_linear_macs

__all__ = ["randomize_bn", "assert_equivalent", "conv_linear_macs"]


def randomize_bn(model: nn.Module, seed: int = 0, *, running_mean: bool = True) -> nn.Module:
    """Give every BN random gamma in (0, 1), small beta and non-trivial running stats, in place.

    ``running_mean=False`` leaves running means at 0 (the suites' baselines were counted so).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.affine:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if running_mean:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def assert_equivalent(model: nn.Module, x: torch.Tensor, plan, pruned: nn.Module | None = None,
                      rtol: float | None = None) -> float:
    """The equivalence contract: prune(model, plan)(x) == zeroed-BN model(x), eval mode, 1e-4 of the
    largest output in float32 (1e-9 in float64); returns the relative error."""
    pruned = pruned if pruned is not None else slimbench.prune(model, x, plan=plan)
    pruned.eval()
    with torch.inference_mode():
        ref = slimbench.zero_bn_channels(model, plan).eval()(x)
        out = pruned(x)
    scale = ref.abs().max().clamp_min(1e-12)
    err = ((out - ref).abs().max() / scale).item()
    limit = rtol if rtol is not None else (1e-9 if x.dtype == torch.float64 else 1e-4)
    assert err <= limit, f"pruned model differs from the zeroed model by {err:.3g} (limit {limit})"
    return err
