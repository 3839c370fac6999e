"""Pruning criteria: turn BN scale factors into a keep decision per channel class.

Every criterion takes a class importance (mean |gamma| over the BNs of a class), the set of
candidate classes and their layers (a layer = the classes that share one channel space), and
returns a boolean "prune" array over classes. ``ratio`` is always the fraction of candidate
channels to remove, so criteria are comparable at the same ratio.
"""

from __future__ import annotations

import numpy as np

__all__ = ["METHODS", "network_slimming", "optimal_thresholding", "uniform", "global_threshold"]


def _smallest(importance: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    prune = np.zeros(len(importance), dtype=bool)
    idx = np.flatnonzero(candidates)
    if count > 0 and idx.size:
        order = np.argsort(importance[idx], kind="stable")
        prune[idx[order[:count]]] = True
    return prune


def global_threshold(importance: np.ndarray, candidates: np.ndarray, ratio: float) -> float:
    """The |gamma| value below which network slimming prunes (-inf when it prunes nothing)."""
    values = np.sort(importance[candidates])
    count = int(np.floor(ratio * values.size))
    return float(values[count - 1]) if count > 0 else float("-inf")


def network_slimming(importance: np.ndarray, candidates: np.ndarray, layers: list[np.ndarray],
                     ratio: float, **_) -> np.ndarray:
    """One global threshold over all candidate classes (Liu et al., 2017)."""
    return _smallest(importance, candidates, int(np.floor(ratio * candidates.sum())))


def uniform(importance: np.ndarray, candidates: np.ndarray, layers: list[np.ndarray],
            ratio: float, **_) -> np.ndarray:
    """The same fraction in every layer, lowest |gamma| first."""
    prune = np.zeros(len(importance), dtype=bool)
    for layer in layers:
        mask = np.zeros(len(importance), dtype=bool)
        mask[layer] = candidates[layer]
        prune |= _smallest(importance, mask, int(np.floor(ratio * mask.sum())))
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
            prune |= _smallest(importance, mask, _ot_layer(importance[mask], delta))
    return prune


def optimal_thresholding(importance: np.ndarray, candidates: np.ndarray, layers: list[np.ndarray],
                         ratio: float | None = None, delta: float | None = None, **_) -> np.ndarray:
    """Per layer: prune the longest prefix of ascending |gamma| whose sum of squares stays
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


METHODS = {
    "network_slimming": network_slimming,
    "optimal_thresholding": optimal_thresholding,
    "uniform": uniform,
}
