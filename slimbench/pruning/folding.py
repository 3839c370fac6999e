"""Beta folding: keep the constant that a pruned channel still emits.

A pruned channel whose gamma is (nearly) 0 does not output 0 in the trained model: its BN outputs
beta, and the ops after it turn that into a constant map (relu(beta), say). Folding that constant
through each consumer into the consumer's bias keeps the pruned model close to the *unpruned*
one instead of to the zeroed one. It is exact for 1x1 convs and linear layers; a k x k conv with
zero padding sees the constant only partly at the borders, so there the fold is off by the
weights that fall on the padding (measured in tests/test_folding.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from slimbench.analysis.graph import ChannelGraph
from slimbench.core.inputs import unwrap
from slimbench.pruning.plan import PruningPlan


def gamma_zeroed(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy with gamma = 0 (beta kept) on every pruned channel: what folding preserves."""
    ref = copy.deepcopy(unwrap(model)).eval()
    modules = dict(ref.named_modules())
    with torch.no_grad():
        for name, mask in plan.masks.items():
            modules[name].weight[~torch.as_tensor(mask)] = 0
    return ref


def _consumer_inputs(model: nn.Module, names: list[str], inputs: tuple[Tensor, ...]) -> dict[str, Tensor]:
    captured: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda m, args, n=n: captured.__setitem__(n, args[0].detach()))
             for n in names]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return captured


def fold_beta(source: nn.Module, pruned: nn.Module, graph: ChannelGraph, keep: np.ndarray,
              plan: PruningPlan, inputs: tuple[Tensor, ...], removed: frozenset[str]) -> None:
    """Add each pruned channel's constant contribution to the biases of ``pruned``'s consumers."""
    consumers = [rec for name, rec in graph.convs.items()
                 if rec.role == "dense" and name not in removed and not keep[rec.in_gids].all()]
    if not consumers:
        return
    seen = _consumer_inputs(gamma_zeroed(source, plan), [r.name for r in consumers], inputs)
    originals = dict(unwrap(source).named_modules())
    targets = dict(pruned.named_modules())
    with torch.no_grad():
        for rec in consumers:
            x, weight = seen[rec.name], originals[rec.name].weight
            dropped = torch.as_tensor(np.flatnonzero(~keep[rec.in_gids]), device=weight.device)
            if x.dim() > 2:  # a constant map: read it at the centre, away from padded borders
                centre = tuple(s // 2 for s in x.shape[2:])
                const = x[(0, slice(None), *centre)].index_select(0, dropped)
                w = weight.index_select(1, dropped)
                delta = (w * const.view(1, -1, *([1] * (w.dim() - 2)))).flatten(1).sum(1)
            else:
                delta = weight.index_select(1, dropped) @ x[0].index_select(0, dropped)
            delta = delta[torch.as_tensor(keep[rec.out_gids])]
            module = targets[rec.name]
            if module.bias is None:
                module.bias = nn.Parameter(delta.clone(), requires_grad=module.weight.requires_grad)
            else:
                module.bias += delta
