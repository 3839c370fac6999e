"""Pruning criteria: turn a channel-class importance into a prune decision per class.

Every criterion is a function ``fn(importance, candidates, layers, ratio, **options)``: the class
importance (see ``importance.py``; mean |gamma| by default), a boolean array of the classes it may
prune, the layers (a layer = the classes that share one channel space), and ``ratio``, the fraction
of candidate channels to remove, so criteria are comparable at the same ratio. It returns a boolean
"prune" array over classes. Its own options are the keyword parameters after ``ratio``
(``delta`` for optimal thresholding); ``slimbench.plan`` refuses options a criterion does not take.

Add one with ``register_criterion(name, fn)``; ``METHODS`` maps every registered name to its function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from slimbench.core.errors import SlimbenchValueError

__all__ = ["Criterion", "CRITERIA", "METHODS", "register_criterion", "get_criterion", "smallest", "network_slimming",
           "optimal_thresholding", "uniform", "global_threshold"]

_STANDARD = ("importance", "candidates", "layers", "ratio")


@dataclass(frozen=True)
class Criterion:
    """A registered criterion and what ``slimbench.plan`` needs to know about it."""

    name: str
    fn: Callable[..., np.ndarray]
    options: tuple[str, ...] = ()  # keyword options the criterion takes (besides ratio)
    sets_amount: tuple[str, ...] = ()  # options that decide how much is pruned (ratio/target_macs then unused)
    validate: Callable[[dict], None] | None = None  # raises ValueError on bad option values
    threshold: Callable[[np.ndarray, np.ndarray, float], float] | None = None  # for branches="remove"
    doc: str = field(default="", compare=False)

    def check(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) if self.options else "none"
            others = [c.name for c in CRITERIA.values() if unknown[0] in c.options]
            hint = f"; {unknown[0]!r} is an option of {', '.join(others)}" if others else ""
            raise SlimbenchValueError(
                f"criterion {self.name!r} has no option {unknown[0]!r} (its options: {valid}){hint}")
        if self.validate is not None:
            self.validate(options)


CRITERIA: dict[str, Criterion] = {}
METHODS: dict[str, Callable[..., np.ndarray]] = {}  # name -> function (kept in step with CRITERIA)


def _options_of(fn: Callable) -> tuple[str, ...]:
    params = inspect.signature(fn).parameters.values()
    return tuple(p.name for p in params if p.name not in _STANDARD
                 and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def register_criterion(name: str, fn: Callable[..., np.ndarray], *, sets_amount: tuple[str, ...] = (),
                       validate: Callable[[dict], None] | None = None,
                       threshold: Callable[[np.ndarray, np.ndarray, float], float] | None = None,
                       replace: bool = False) -> Criterion:
    """Make ``fn`` available as ``slimbench.plan(..., method=name)``.

    ``fn(importance, candidates, layers, ratio, **options)`` returns a bool prune-array over classes;
    its options are its keyword parameters after ``ratio``. ``sets_amount``: options that, when
    given, decide the amount pruned themselves (``ratio`` / ``target_macs`` are then refused).
    ``validate(options)`` raises ``ValueError`` for bad values. ``threshold(importance, candidates,
    ratio)``: the importance under which a residual branch is removed (``branches="remove"``).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise SlimbenchValueError(f"criterion name must be an identifier such as 'my_criterion', got {name!r}")
    if not callable(fn):
        raise TypeError(f"criterion {name!r}: fn must be callable, got {type(fn).__name__}")
    if name in CRITERIA and not replace:
        raise SlimbenchValueError(f"criterion {name!r} is already registered; pass replace=True to override it")
    options = _options_of(fn)
    missing = [o for o in sets_amount if o not in options]
    if missing:
        raise SlimbenchValueError(f"criterion {name!r}: sets_amount names {missing[0]!r}, which fn does not take")
    criterion = Criterion(name, fn, options, tuple(sets_amount), validate, threshold,
                          inspect.getdoc(fn) or "")
    CRITERIA[name] = criterion
    METHODS[name] = fn
    return criterion


def get_criterion(name: str) -> Criterion:
    if not isinstance(name, str) or name not in CRITERIA:
        raise SlimbenchValueError(f"unknown method {name!r}; choose one of {', '.join(CRITERIA)} "
                         "(or add one with slimbench.pruning.criteria.register_criterion)")
    return CRITERIA[name]


def smallest(importance: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    prune = np.zeros(len(importance), dtype=bool)
    idx = np.flatnonzero(candidates)
    if count > 0 and idx.size:
        order = np.argsort(importance[idx], kind="stable")
        prune[idx[order[:count]]] = True
    return prune


def global_threshold(importance: np.ndarray, candidates: np.ndarray, ratio: float) -> float:
    """The importance value below which network slimming prunes (-inf when it prunes nothing)."""
    values = np.sort(importance[candidates])
    count = int(np.floor(ratio * values.size))
    return float(values[count - 1]) if count > 0 else float("-inf")


def network_slimming(importance: np.ndarray, candidates: np.ndarray, layers: list[np.ndarray],
                     ratio: float) -> np.ndarray:
    """One global threshold over all candidate classes (Liu et al., 2017)."""
    return smallest(importance, candidates, int(np.floor(ratio * candidates.sum())))


def uniform(importance: np.ndarray, candidates: np.ndarray, layers: list[np.ndarray],
            ratio: float) -> np.ndarray:
    """The same fraction in every layer, lowest importance first."""
    prune = np.zeros(len(importance), dtype=bool)
    for layer in layers:
        mask = np.zeros(len(importance), dtype=bool)
        mask[layer] = candidates[layer]
        prune |= smallest(importance, mask, int(np.floor(ratio * mask.sum())))
    return prune


def _ot_layer(values: np.ndarray, delta: float) -> int:
    """How many of the ascending ``values`` Optimal Thresholding prunes."""
    squares = np.sort(values) ** 2
    total = squares.sum()
    if total <= 0:
        return len(values)
    return int(np.searchsorted(np.cumsum(squares), delta * total, side="right"))


def _ot_prune(importance, candidates, layers, delta) -> np.ndarray:
    prune = np.zeros(len(importance), dtype=bool)
    for layer in layers:
        mask = np.zeros(len(importance), dtype=bool)
        mask[layer] = candidates[layer]
        if mask.any():
            prune |= smallest(importance, mask, _ot_layer(importance[mask], delta))
    return prune


def optimal_thresholding(importance: np.ndarray, candidates: np.ndarray, layers: list[np.ndarray],
                         ratio: float | None = None, delta: float | None = None) -> np.ndarray:
    """Per layer: prune the longest prefix of ascending importance whose sum of squares stays
    within ``delta`` of the layer's total (Ye et al., 2020).

    With ``delta`` given it is used as is. Otherwise delta is searched so that the pruned
    fraction of candidates comes as close to ``ratio`` as possible without exceeding it.
    """
    if delta is not None:
        return _ot_prune(importance, candidates, layers, delta)
    n = max(int(candidates.sum()), 1)
    low, high = 0.0, 1.0
    best = np.zeros(len(importance), dtype=bool)
    for _ in range(40):
        mid = (low + high) / 2
        prune = _ot_prune(importance, candidates, layers, mid)
        if prune.sum() / n <= ratio:
            best, low = prune, mid
        else:
            high = mid
    return best


def _check_delta(options: dict) -> None:
    delta = options.get("delta")
    if delta is None:
        return
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise SlimbenchValueError(f"delta (optimal_thresholding) must be a number in (0, 1), the fraction of each "
                         f"layer's sum of squared importance that may be pruned; got {delta!r}")


register_criterion("network_slimming", network_slimming, threshold=global_threshold)
register_criterion("optimal_thresholding", optimal_thresholding, sets_amount=("delta",), validate=_check_delta)
register_criterion("uniform", uniform)
