"""Class-level steps of planning around the criterion: which classes are candidates (residual mode,
``ignored_layers``), per-layer ratio overrides, and the rules every plan obeys afterwards (``round_to``,
equal counts per group of a grouped conv, selections, at least one channel per space)."""

from __future__ import annotations

import numpy as np

from slimbench.analysis.graph import ChannelGraph
from slimbench.core.errors import SlimbenchValueError
from slimbench.pruning.criteria import smallest

__all__ = ["layers_of", "candidate_classes", "layer_overrides", "enforce", "removed_by", "smallest",
           "check_round_to"]


def layers_of(graph: ChannelGraph) -> tuple[np.ndarray, list[np.ndarray]]:
    """Layer index per class (the first space it touches) and the classes of each layer."""
    key = np.full(graph.n_classes, np.iinfo(np.int64).max)
    np.minimum.at(key, graph.class_of, graph.space_of)
    order = np.argsort(key, kind="stable")
    _, starts = np.unique(key[order], return_index=True)
    return key, np.split(order, starts[1:])


def _classes_of_module(graph: ChannelGraph, name: str) -> np.ndarray:
    """Channel classes a module's channels belong to (BN: its channels, and its inputs when it selects;
    conv / linear: its output channels); a container: those of every BN / conv inside it."""
    gids: list[np.ndarray] = []
    for bn_name, rec in graph.bns.items():
        if bn_name == name or bn_name.startswith(name + ".") or not name:
            gids.append(rec.gids)
            if rec.selector:
                gids.append(rec.in_gids)
    for conv_name, rec in graph.convs.items():
        if conv_name == name or conv_name.startswith(name + ".") or not name:
            gids.append(rec.out_gids)
    if not gids:
        raise SlimbenchValueError(f"ignored_layers: {name!r} is neither a BatchNorm, conv or linear layer the channel "
                         "graph knows nor a module containing one; name a BN, a conv or a block")
    return np.unique(graph.class_of[np.concatenate(gids)])


def candidate_classes(graph: ChannelGraph, residual: str, ignored: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(classes the criterion may prune, classes kept because of ``ignored_layers``)."""
    candidates = graph.prunable_classes()
    if residual != "shared":
        candidates &= ~graph.class_residual
    kept = np.zeros(graph.n_classes, dtype=bool)
    for name in ignored:
        kept[_classes_of_module(graph, name)] = True
    return candidates & ~kept, kept


def layer_overrides(graph: ChannelGraph, layer_ratios: dict[str, float], candidates: np.ndarray,
                    key: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """(candidate classes of the layer, ratio) for each ``layer_ratios`` entry."""
    out = []
    for name, ratio in layer_ratios.items():
        if name not in graph.bns:
            raise SlimbenchValueError(f"layer_ratios: {name!r} is not a BatchNorm of the channel graph; name the BN "
                             "that scales the layer's channels (e.g. 'layer1.0.bn1')")
        classes = np.unique(graph.class_of[graph.bns[name].gids])
        mine = classes[candidates[classes]]
        if not mine.size:
            why = graph.bn_class_reason(name) or ("its channels are joined by a residual add (residual='shared' "
                                                  "prunes such groups)" if graph.class_residual[classes].any()
                                                  else "it is in ignored_layers")
            raise SlimbenchValueError(f"layer_ratios: {name!r} has no channel this plan may prune: {why}")
        layer = np.flatnonzero(np.isin(key, np.unique(key[mine])) & candidates)
        out.append((layer, ratio))
    return out


def check_round_to(graph: ChannelGraph, candidates: np.ndarray, round_to: int, key: np.ndarray,
                   layers: list[np.ndarray]) -> None:
    """``round_to`` larger than every prunable layer could round nothing: refuse it."""
    if round_to <= 1:
        return
    sizes = [len(layer) for layer in layers if candidates[layer].any()]
    if sizes and max(sizes) <= round_to:
        raise SlimbenchValueError(
            f"round_to={round_to} leaves nothing to prune: a layer keeps a multiple of {round_to} "
                         f"channels, at least {round_to}, and the largest prunable layer has {max(sizes)} "
                         f"channels; pass round_to < {max(sizes)}")


def enforce(graph: ChannelGraph, prune: np.ndarray, importance: np.ndarray, candidates: np.ndarray,
            round_to: int, removed_spaces: set[int]) -> np.ndarray:
    """Round counts, respect grouped convs and selections, and keep >= 1 channel per space.

    With ``round_to`` N, a layer keeps a multiple of N channels (or all of them), at least N; a layer with N
    channels or fewer therefore stays whole.
    """
    prune = prune.copy()
    key, layers = layers_of(graph)
    if round_to > 1:
        for layer in layers:
            cand = layer[candidates[layer]]
            if not cand.size:
                continue
            kept = len(layer) - int(prune[layer].sum())
            target = min(len(layer), max(round_to, int(round(kept / round_to)) * round_to))
            fixed = len(layer) - cand.size  # non-candidates are always kept
            n_keep = max(0, target - fixed)
            order = cand[np.argsort(-importance[cand], kind="stable")]
            prune[order[:n_keep]] = False
            prune[order[n_keep:]] = True
    for rec in graph.convs.values():  # a grouped conv keeps as many channels in every group
        if not (rec.role == "grouped" or rec.role == "joined" and rec.group_size > 1):
            continue
        classes = graph.class_of[rec.out_gids].reshape(rec.groups, rec.group_size)
        kept = (~prune[classes]).sum(1)
        forced = int((~candidates[classes]).sum(1).max())  # channels a group cannot drop
        k = int(np.clip(round(kept.mean()), max(1, forced), rec.group_size))
        for block in classes:
            order = block[np.lexsort((-importance[block], candidates[block]))]  # the forced ones first
            prune[order[:k]] = False
            prune[order[k:]] = prune[order[k:]] | candidates[order[k:]]
    keep_gid = ~prune[graph.class_of]
    for rec in graph.bns.values():
        if rec.selector:
            dropped = graph.class_of[rec.gids][~keep_gid[rec.in_gids]]
            prune[dropped] = True
    keep_gid = ~prune[graph.class_of]
    kept_per_space = np.bincount(graph.space_of, weights=keep_gid, minlength=len(graph.spaces))
    size = np.bincount(graph.space_of, minlength=len(graph.spaces))
    for space in np.flatnonzero((kept_per_space == 0) & (size > 0)):  # a 0-channel space has nothing to keep
        if space in removed_spaces:
            continue
        classes = np.unique(graph.class_of[graph.space_of == space])
        prune[classes[np.argmax(importance[classes])]] = False
    return prune


def removed_by(graph: ChannelGraph, names: list[str]) -> tuple[frozenset[str], set[int]]:
    """Modules and spaces that removing the branches ending at BNs ``names`` takes away."""
    modules = frozenset().union(*(b.modules for b in graph.branches if b.bn in names)) if names else frozenset()
    spaces = {i for i, (_, owner, _) in enumerate(graph.spaces) if owner in modules}
    return modules, spaces


def bisect_ratio(decide, cost, goal: float, top, *, steps: int = 30, most: float = 0.999):
    """The smallest ratio in [0, ``most``] whose ``decide(ratio)`` has ``cost`` <= ``goal``, by bisection
    (cost falls as the ratio grows), and that decision. ``top`` is ``decide(most)``, which the caller
    has checked meets the goal; target_macs and target_latency both search this way."""
    low, high, best = 0.0, most, top
    for _ in range(steps):
        mid = (low + high) / 2
        attempt = decide(mid)
        if cost(attempt) <= goal:
            best, high = attempt, mid
        else:
            low = mid
    return best, high
