"""Why a plan removes (almost) nothing, and which option would remove more: computed, not guessed.

``warn_if_little`` runs after planning: when ``ratio`` >= ``ASKED`` was asked and the plan removes
less than ``LITTLE`` of the conv+linear MACs, it counts where the BNs went (coupled residual groups,
frozen, ignored, too small for ``round_to``), re-plans with each alternative that could change that
(the other residual modes, ``round_to=1``, no ``ignored_layers``) and names the best in a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from slimbench.analysis.graph import ChannelGraph
from slimbench.pruning.selection import candidate_classes

__all__ = ["warn_if_little", "why_little", "LITTLE", "ASKED"]

LITTLE = 0.05  # warn below this fraction of MACs removed ...
ASKED = 0.1  # ... when at least this ratio was asked


def _count(n: int, total: int) -> str:
    return f"all {total}" if n == total else f"{n} of {total}"


def why_little(graph: ChannelGraph, opts, pruned: int) -> str:
    """Where the BatchNorms went: coupled, frozen (first reason), ignored, or rounded away."""
    candidates, ignored = candidate_classes(graph, opts.residual, opts.ignored_layers)
    total, parts = len(graph.bns), []
    coupled, frozen, kept = [], [], []
    for name, rec in graph.bns.items():
        classes = np.unique(graph.class_of[rec.gids])
        if candidates[classes].any():
            continue
        if ignored[classes].any():
            kept.append(name)
        elif graph.bn_class_reason(name) is not None:
            frozen.append(name)
        elif graph.class_residual[classes].any():
            coupled.append(name)
    if coupled:
        parts.append(f"{_count(len(coupled), total)} BNs are in coupled residual groups "
                     f"(residual={opts.residual!r} keeps them whole)")
    if frozen:
        parts.append(f"{_count(len(frozen), total)} BNs cannot be pruned (first, {frozen[0]!r}: "
                     f"{graph.bn_class_reason(frozen[0])})")
    if kept:
        parts.append(f"{_count(len(kept), total)} BNs are in ignored_layers")
    if opts.round_to > 1:
        small = [n for n, r in graph.bns.items() if len(r.gids) <= opts.round_to]
        if small:
            parts.append(f"{_count(len(small), total)} BNs have no more than round_to={opts.round_to} channels "
                         "and stay whole")
    n_candidates = int(candidates[graph.class_of].sum())
    if not parts and pruned == 0:
        parts.append(f"of the {n_candidates} prunable channels none can go at ratio={opts.ratio} "
                     "(each layer keeps at least one channel)")
    elif not parts:
        plural = "s" if pruned != 1 else ""
        parts.append(f"the {pruned} channel{plural} pruned (of {n_candidates} prunable) carry few of the MACs")
    return "; ".join(parts)


def _alternatives(opts) -> list[dict]:
    out = [{"residual": r} for r in ("shared", "select") if r != opts.residual]
    if opts.round_to > 1:
        out.append({"round_to": 1})
    if opts.ignored_layers:
        out.append({"ignored_layers": ()})
    return out


def warn_if_little(graph: ChannelGraph, opts, plan, replan: Callable[..., object]) -> None:
    """Warn (UserWarning) when ``plan`` removes < LITTLE of the MACs although ratio >= ASKED was asked."""
    if opts.ratio is None or opts.ratio < ASKED or opts.target_macs is not None or not plan.macs_before:
        return
    removed = 1 - plan.macs_after / plan.macs_before
    if removed >= LITTLE:
        return
    best, best_removed = None, removed
    for change in _alternatives(opts):
        try:
            other = replan(**change)
        except ValueError:
            continue
        fraction = 1 - other.macs_after / other.macs_before
        if fraction > best_removed + 0.01:
            best, best_removed = change, fraction
    if best is None:
        hint = "no other residual mode, round_to or ignored_layers setting removes more"
    else:
        setting = ", ".join(f"{k}={v!r}" for k, v in best.items())
        hint = f"{setting} removes {best_removed:.0%} of the MACs"
    warnings.warn(f"the plan removes only {removed:.1%} of the conv+linear MACs at ratio={opts.ratio}: "
                  f"{why_little(graph, opts, plan.pruned_channels)}; {hint}", UserWarning, stacklevel=4)
