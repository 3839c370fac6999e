"""Latency-aware planning: ``plan(..., target_latency=0.5)`` and ``plan(..., widths="latency")``.

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
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from slimbench.analysis.graph import ChannelGraph
from slimbench.bench.latency_predict import LatencyModel
from slimbench.bench.latency_table import step_ends
from slimbench.pruning.options import PlanOptions
from slimbench.pruning.selection import bisect_ratio, layers_of

__all__ = ["latency_widths", "latency_search", "table_record", "landed", "CORRECTIONS", "TOLERANCE"]

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


def latency_widths(graph: ChannelGraph, lm: LatencyModel, importance: np.ndarray, pool: np.ndarray,
                   done: Callable[[np.ndarray, np.ndarray], bool], tol: float = 0.03) -> np.ndarray:
    """Prune decision over classes (True = prune) with every layer at a latency step end.

    ``done(prune, keep_gid)`` says when the budget is met. Layers are those of ``selection.layers_of``;
    within a layer the candidates go lowest importance first.
    """
    _, layers = layers_of(graph)
    keep_class = np.ones(graph.n_classes, dtype=bool)
    state = []  # per layer: (ordered candidates high -> low, allowed kept counts, position, convs)
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
        allowed = step_ends(counts, curve, tol)
        state.append([order, allowed, len(allowed) - 1, convs])
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


def latency_search(graph: ChannelGraph, opts: PlanOptions, decide: Callable, finish: Callable,
                   importance: np.ndarray, pool: np.ndarray):
    """The plan for ``target_latency`` and/or ``widths="latency"`` (called by ``plan_on_graph``)."""
    lm = opts.latency
    if lm is None or isinstance(lm, dict):
        raise ValueError("latency-aware planning needs a LatencyModel: call slimbench.plan / Analysis.plan "
                         "(they build one), or pass latency=slimbench.pruning.latency_model.latency_model(...)")
    if lm.graph is not graph:
        lm = LatencyModel(lm.table, graph, lm.specs, lm.scale, lm.constant, lm.reference_ms, lm.measure_fn)

    def predicted(attempt) -> float:
        return lm.predict(~attempt[0][graph.class_of], attempt[2])

    def widths_attempt(done) -> tuple:
        return decide(None, latency_widths(graph, lm, importance, pool, done))

    full = lm.predict()
    if opts.target_latency is None:  # latency-aware widths under a ratio or MACs budget
        if opts.target_macs is not None:
            goal = opts.target_macs * graph.macs()
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
            attempt, _ = _goal_search(decide, predicted, goal)
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
    hint = ("; widths='latency' keeps whole channel blocks, so layers of one block stay whole "
            "(widths='channels' may prune further)" if widths == "latency" else
            "; residual='shared' or 'select' lets the plan prune the channels joined by residual adds")
    warnings.warn(f"{asked} was not reached: the plan keeps {reached:.3f}{hint}", stacklevel=5)
