"""Channel importance: a score per BatchNorm channel, and per channel class (their mean).

An importance is a function ``fn(name, bn) -> scores``: for the BatchNorm module ``bn`` at
qualified name ``name``, one finite, non-negative score per channel (a tensor or array of
``bn.num_features`` values); higher means more important. Channels coupled across BNs (a residual
group) form one class whose importance is the mean of its channels' scores. Criteria compare these
numbers (network slimming: one global threshold; see ``criteria.py``).

Built in: ``"gamma"`` (|gamma|, network slimming's; the default) and ``"bn_scale"``
(|gamma| / sqrt(running_var + eps): the gain the BN really applies in eval mode). Add one with
``register_importance(name, fn)`` or pass the function itself: ``slimbench.plan(..., importance=fn)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from slimbench.analysis.graph import ChannelGraph
from slimbench.core.errors import SlimbenchValueError

__all__ = ["IMPORTANCES", "Importance", "register_importance", "resolve_importance", "importance_name",
           "bn_scores", "class_importance", "gamma", "bn_scale"]

Importance = Callable[[str, nn.Module], "torch.Tensor | np.ndarray"]
IMPORTANCES: dict[str, Importance] = {}


def _as_numpy(value: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float64).cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def gamma(name: str, bn: nn.Module) -> torch.Tensor:
    """|gamma| (ones for a BN without affine weights)."""
    if bn.weight is None:
        return torch.ones(bn.num_features)
    return bn.weight.detach().abs()


def bn_scale(name: str, bn: nn.Module) -> torch.Tensor:
    """|gamma| / sqrt(running_var + eps): the scale a channel gets from the BN in eval mode."""
    scale = gamma(name, bn).double()
    if getattr(bn, "running_var", None) is not None:
        scale = scale / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    return scale


def register_importance(name: str, fn: Importance, *, replace: bool = False) -> None:
    """Make ``fn(name, bn) -> scores`` available as ``slimbench.plan(..., importance=name)``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise SlimbenchValueError(f"importance name must be an identifier such as 'my_score', got {name!r}")
    if not callable(fn):
        raise TypeError(f"importance {name!r} must be callable fn(name, bn) -> scores, got {type(fn).__name__}")
    if name in IMPORTANCES and not replace:
        raise SlimbenchValueError(f"importance {name!r} is already registered; pass replace=True to override it")
    IMPORTANCES[name] = fn


def resolve_importance(importance: str | Importance) -> Importance:
    if callable(importance):
        return importance
    if isinstance(importance, str) and importance in IMPORTANCES:
        return IMPORTANCES[importance]
    raise SlimbenchValueError(f"importance must be one of {', '.join(IMPORTANCES)} or a function fn(name, bn) -> "
                     f"scores per channel; got {importance!r}")


def importance_name(importance: str | Importance) -> str:
    """What a plan records: the registered name, or the function's qualified name."""
    if isinstance(importance, str):
        return importance
    for name, fn in IMPORTANCES.items():
        if fn is importance:
            return name
    return f"{getattr(importance, '__module__', '?')}.{getattr(importance, '__qualname__', repr(importance))}"


def bn_scores(graph: ChannelGraph, model: nn.Module, importance: str | Importance) -> dict[str, np.ndarray]:
    """Per-channel scores of every BN in ``graph``, checked (shape, finite, >= 0)."""
    fn = resolve_importance(importance)
    modules = dict(model.named_modules())
    scores = {}
    with torch.no_grad():
        for name, rec in graph.bns.items():
            values = _as_numpy(fn(name, modules[name])).reshape(-1)
            label = importance_name(importance)
            if values.shape != (len(rec.gids),):
                raise SlimbenchValueError(f"importance {label!r} gave {values.size} scores for {name!r}, which has "
                                 f"{len(rec.gids)} channels; return one score per channel")
            if not np.isfinite(values).all() or (values < 0).any():
                raise SlimbenchValueError(f"importance {label!r} gave a negative or non-finite score for {name!r}; "
                                 "scores must be finite and >= 0")
            scores[name] = values
    return scores


def class_importance(graph: ChannelGraph, scores: dict[str, np.ndarray]) -> np.ndarray:
    """Mean score per channel class (inf for classes no BN scores: they are never ranked low)."""
    sums = np.zeros(graph.n_classes)
    counts = np.zeros(graph.n_classes)
    for name, rec in graph.bns.items():
        np.add.at(sums, graph.class_of[rec.gids], scores[name])
        np.add.at(counts, graph.class_of[rec.gids], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


register_importance("gamma", gamma)
register_importance("bn_scale", bn_scale)
