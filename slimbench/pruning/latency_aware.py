"""Latency-aware planning: ``plan(..., target_latency=0.5)``, ``widths="latency"`` and ``widths="steps"``.

Both read a ``LatencyModel`` (``slimbench.bench.latency_predict``): per-conv latency staircases
measured on this machine (``latency_table``), each conv's weight reads at the measured memory bandwidth,
and a calibration on whole-model runs; ``slimbench.plan`` and
``Analysis.plan`` build one (``latency_model.py``) unless ``latency=`` passes one.

``target_latency=t``: keep ``t`` of the unpruned model's latency. The criterion's global threshold
(``widths="channels"``) or the latency-aware widths (``widths="latency"``) are searched against the
*predicted* latency, then the real pruned model is timed against the unpruned one, interleaved, and
the predicted goal is corrected by the measured miss (at most ``CORRECTIONS`` times).

``widths="latency"``: a greedy knapsack (HALP's view). Every layer may only keep a width at the end
of a latency step (a width whose next-larger step costs the same is never kept: the extra channels
are free); starting from the full model, it repeatedly drops the step that loses the least
importance per millisecond saved (a step whose channels have no importance goes first), until the
budget is met: ``ratio`` (at least that fraction of the candidate channels removed), ``target_macs``
or ``target_latency``.

``widths="steps"``: the criterion chooses the channels, as with ``widths="channels"``, and each
layer's kept count then moves to the nearest end of its latency step (a ``round_to`` chosen per
layer and backend from the table); ``target_macs`` and ``target_latency`` search the criterion's
ratio under that snapping. Why both: the knapsack keeps the most importance per millisecond, so under
a MACs budget it spends the MACs where they are cheap in time. On vgg19 (random gamma) it met
``round_to=8``'s MACs with the early 32x32 layers cut to 16 channels and the weight-heavy late ones
kept wide: about three quarters of ``round_to=8``'s speedup. Steps keep the criterion's layer profile and only stop
paying for partial blocks, so at equal MACs they are never slower than a global ``round_to``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import numpy as np

from slimbench.analysis.graph import ChannelGraph
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.latency_table import step_ends
from slimbench.pruning.options import LATENCY_WIDTHS, PlanOptions
from slimbench.pruning.selection import bisect_ratio, layers_of

__all__ = ["latency_widths", "layer_steps", "snap_to_steps", "latency_search", "table_record", "landed",
           "CORRECTIONS", "TOLERANCE"]

CORRECTIONS = 2  # real-model checks after the first search
TOLERANCE = 0.06  # relative miss under which a target_latency plan is accepted (0.5 +- 0.03)


def landed(measured: float, target: float) -> bool:
    """Whether a measured latency fraction is within ``TOLERANCE`` of the target, relatively (an
    absolute band would accept a 0.2 target landing at 0.17, 15 % faster than asked)."""
    return abs(measured / target - 1) <= TOLERANCE


def _layer_convs(graph: ChannelGraph, lm: LatencyModel, layer: np.ndarray) -> list[str]:
    classes = set(layer.tolist())
    out = []
    for name in lm.specs:
        rec = graph.convs[name]
        gids = [g for g in (rec.in_gids, rec.out_gids) if g is not None]
        if any(classes.intersection(graph.class_of[g].tolist()) for g in gids):
            out.append(name)
    return out


def layer_steps(graph: ChannelGraph, lm: LatencyModel, importance: np.ndarray, pool: np.ndarray,
                tol: float = 0.03) -> list[tuple[np.ndarray, list[int], list[str]]]:
    """Per layer (``selection.layers_of``) with candidates: its candidates ordered by importance, high
    first; the kept counts it may end at (the ends of its latency steps, in candidates kept, ascending);
    and the convs whose cost it changes."""
    _, layers = layers_of(graph)
    keep_class = np.ones(graph.n_classes, dtype=bool)
    out = []
    for layer in layers:
        cand = layer[pool[layer]]
        convs = _layer_convs(graph, lm, layer)
        if not cand.size or not convs:
            continue
        order = cand[np.argsort(-importance[cand], kind="stable")]
        fixed = len(layer) - cand.size
        # widths whole blocks of the backend's kernels: below one block or off the block grid the
        # backend changes layout between layers, which one-layer timings cannot see (measured on vgg19:
        # such plans ran 45 % slower than predicted). Step ends are found among those widths only: a
        # misaligned width that costs less must not hide the aligned one below it
        block = max(lm.table.entries[lm.specs[c].key]["step"] for c in convs)
        counts = [k for k in range(0 if fixed else 1, cand.size + 1) if (fixed + k) % block == 0 or k == cand.size]
        curve = []
        for k in counts:
            keep_class[order[k:]] = False
            curve.append(lm.layer_sum(keep_class[graph.class_of], names=convs))
            keep_class[order] = True
        out.append((order, step_ends(counts, curve, tol), convs))
    return out


def snap_to_steps(steps: list[tuple[np.ndarray, list[int], list[str]]], prune: np.ndarray) -> np.ndarray:
    """``widths="steps"``: each layer's kept count (``prune``: a criterion's decision) moved to the
    nearest end of its latency steps, ties up (the channels up to a step's end cost nothing more),
    keeping its most important candidates; a per-layer, per-backend ``round_to``."""
    prune = prune.copy()
    for order, allowed, _ in steps:
        kept = int((~prune[order]).sum())
        target = min(allowed, key=lambda a: (abs(a - kept), -a))
        prune[order[:target]] = False
        prune[order[target:]] = True
    return prune


def latency_widths(graph: ChannelGraph, lm: LatencyModel, importance: np.ndarray, pool: np.ndarray,
                   done: Callable[[np.ndarray, np.ndarray], bool], tol: float = 0.03) -> np.ndarray:
    """The pool's prune decision of ``widths="latency"`` (see the module doc): greedy over latency steps.

    ``done(prune, keep_gid)`` says when the budget is met. Layers are those of ``selection.layers_of``;
    within a layer the candidates go lowest importance first.
    """
    state = [[order, allowed, len(allowed) - 1, convs]
             for order, allowed, convs in layer_steps(graph, lm, importance, pool, tol)]
    prune = np.zeros(graph.n_classes, dtype=bool)
    met = False
    while True:
        met = met or done(prune, ~prune[graph.class_of])
        keep_gid = ~prune[graph.class_of]
        best, best_score = None, np.inf
        for i, (order, allowed, pos, convs) in enumerate(state):
            if pos == 0:
                continue
            k_now, k_next = allowed[pos], allowed[pos - 1]
            lost = float(np.sum(np.minimum(importance[order[k_next:k_now]], 1e30)))
            if met and lost > 0:
                continue  # budget met: only steps that buy no importance are still dropped
            trial = prune.copy()
            trial[order[k_next:]] = True
            saved = lm.layer_sum(keep_gid, names=convs) - lm.layer_sum(~trial[graph.class_of], names=convs)
            score = lost / saved if saved > 0 else np.inf if lost > 0 else 0.0
            if score < best_score or best is None:
                best, best_score = i, score
        if best is None:
            break  # budget met and nothing free is left, or every layer is at its smallest width
        order, allowed, pos, _ = state[best]
        prune[order[allowed[pos - 1]:]] = True
        state[best][2] = pos - 1
    return prune


def _goal_search(decide, cost: Callable, goal: float):
    """Smallest ratio whose plan's predicted cost is <= goal (bisection, as target_macs does)."""
    most = decide(0.999)
    if cost(most) > goal:
        return most, 0.999
    if cost(decide(0.0)) <= goal:
        return decide(0.0), 0.0
    return bisect_ratio(decide, cost, goal, most, steps=25)


def latency_search(graph: ChannelGraph, opts: PlanOptions, decide: Callable, finish: Callable, macs: Callable,
                   importance: np.ndarray, pool: np.ndarray):
    """The plan for ``target_latency`` and/or latency-aware ``widths`` (called by ``plan_on_graph``, whose
    ``decide``, ``finish`` and ``macs`` make, turn into a plan, and count an attempt)."""
    lm = opts.latency
    if lm is None or isinstance(lm, dict):
        raise ValueError("latency-aware planning needs a LatencyModel: call slimbench.plan / Analysis.plan "
                         "(they build one), or pass latency=slimbench.pruning.latency_model.latency_model(...)")
    if lm.graph is not graph:
        lm = dataclasses.replace(lm, graph=graph)

    def predicted(attempt) -> float:
        return lm.predict(~attempt[0][graph.class_of], attempt[2])

    def widths_attempt(done) -> tuple:
        return decide(None, latency_widths(graph, lm, importance, pool, done))

    chooser = decide  # ratio -> attempt: the criterion's channels, or (widths="steps") snapped to step ends
    if opts.widths == "steps":
        steps = layer_steps(graph, lm, importance, pool)

        def chooser(r: float):
            return decide(None, snap_to_steps(steps, decide(r)[0]))

    # a target is a fraction of the unpruned model's measured latency: the calibration's timing of it when
    # there is one (the relative fit is not exact there: +8 % on densenet40, -7.5 % on vgg19 in the suite), else
    # the prediction
    full = lm.reference_ms or lm.predict()
    if opts.target_latency is None:  # latency-aware widths under a ratio or MACs budget
        goal = None if opts.target_macs is None else opts.target_macs * graph.macs()
        if opts.widths == "steps":
            attempt = chooser(opts.ratio) if goal is None else _goal_search(chooser, macs, goal)[0]
        elif goal is not None:
            attempt = widths_attempt(lambda p, keep: graph.macs(keep) <= goal)
        else:
            need = int(np.floor(opts.ratio * pool.sum()))
            attempt = widths_attempt(lambda p, keep: int((p & pool).sum()) >= need)
        plan = finish(attempt, opts.ratio)
        plan.options["latency"] = {"predicted_ratio": predicted(attempt) / full, "table": table_record(lm),
                                   "calibrated": lm.reference_ms is not None}
        if opts.target_macs is not None and plan.macs_after > goal:
            _unreachable(f"target_macs={opts.target_macs}", plan.macs_after / plan.macs_before, opts.widths)
        return plan
    goal_fraction, tried = opts.target_latency, []
    for _ in range(CORRECTIONS + 1):
        goal = goal_fraction * full
        if opts.widths == "latency":
            attempt = widths_attempt(lambda p, keep, goal=goal: lm.predict(keep) <= goal)
        else:
            attempt, _ = _goal_search(chooser, predicted, goal)
        plan = finish(attempt, None)
        info = {"predicted_ratio": predicted(attempt) / full, "goal_fraction": goal_fraction,
                "table": table_record(lm)}
        if lm.measure_fn is None:
            plan.options["latency"] = info
            return plan
        info["measured_ratio"] = lm.measure_fn(plan)
        plan.options["latency"] = info
        tried.append(plan)
        miss = info["measured_ratio"] / opts.target_latency
        if landed(info["measured_ratio"], opts.target_latency):
            break
        goal_fraction = min(1.0, goal_fraction / miss)
    best = min(tried, key=lambda p: abs(p.options["latency"]["measured_ratio"] - opts.target_latency))
    reached = best.options["latency"]["measured_ratio"]
    if reached > opts.target_latency * (1 + TOLERANCE):
        _unreachable(f"target_latency={opts.target_latency}", reached, opts.widths)
    elif not landed(reached, opts.target_latency):
        warnings.warn(f"target_latency={opts.target_latency} was missed: the closest of {len(tried)} plans checked "
                      f"runs at {reached:.3f} of the unpruned latency, faster than asked, where the "
                      f"prediction said {best.options['latency']['predicted_ratio']:.3f}. Latency is not monotonic "
                      f"in the pruned amount where widths leave the backend's channel blocks; widths='latency' "
                      f"keeps whole blocks", stacklevel=4)
    return best


def table_record(lm: LatencyModel) -> dict:
    """What a plan records of the table it was made with: its key (backend, threads, ...), the batch
    it was timed at, and how it was obtained: ``from_cache`` when every layer shape was read from the
    cache; ``build_s`` and ``measured_points`` of the ``build_table`` call that made it."""
    table, shapes = lm.table, {s.key: s for s in lm.specs.values()}
    batches = sorted({s.batch for s in shapes.values()})
    return {"backend": table.key.get("backend"), "threads": table.key.get("threads"),
            "batch": batches[0] if len(batches) == 1 else batches, "shapes": len(shapes),
            "cached_shapes": table.cached_shapes, "measured_points": table.measured_points,
            "build_s": round(table.build_seconds, 3),
            "from_cache": table.measured_points == 0 and table.cached_shapes > 0,
            **({"timing": table.key["timing"]} if "timing" in table.key else {})}


def _unreachable(asked: str, reached: float, widths: str) -> None:
    hint = (f"; widths='{widths}' keeps whole channel blocks, so layers of one block stay whole "
            "(widths='channels' may prune further)" if widths in LATENCY_WIDTHS else
            "; residual='shared' or 'select' lets the plan prune the channels joined by residual adds")
    warnings.warn(f"{asked} was not reached: the plan keeps {reached:.3f}{hint}", stacklevel=5)
