"""PruningPlan: which BN channels go, as plain data; and how a plan is made from a model.

A plan is pure, JSON-serialisable data: keep-masks per BatchNorm, the residual branches removed,
and the options it was made with; it holds no reference to the model or its traced graph.
``slimbench.prune`` re-derives every conv/linear slice from it (``slimbench.analyze`` keeps the
graph for repeated plans and prunes). Options are checked in ``options.py``; the class-level
selection steps (rounding, grouped convs, layer overrides) live in ``selection.py``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from slimbench.analysis.graph import DEFAULT_RESIDUAL, ChannelGraph, build_graph
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import ExampleInputs, as_example_inputs, unwrap
from slimbench.pruning.diagnose import warn_if_little
from slimbench.pruning.importance import Importance, bn_scores, class_importance
from slimbench.pruning.options import BRANCH_MODES, LATENCY_WIDTHS, RESIDUAL_MODES, PlanOptions, check_options
from slimbench.pruning.selection import (
    bisect_ratio,
    candidate_classes,
    check_round_to,
    enforce,
    layer_overrides,
    layers_of,
    removed_by,
    smallest,
)

__all__ = ["PruningPlan", "make_plan", "plan_on_graph", "keep_from_plan", "RESIDUAL_MODES", "BRANCH_MODES"]

FORMAT = "slimbench.plan/1"


@dataclass
class PruningPlan:
    masks: dict[str, Tensor]  # BN qualified name -> bool keep-mask over its channels
    method: str
    ratio: float | None
    input_shapes: list[list[int]]
    options: dict = field(default_factory=dict)
    branches: list[str] = field(default_factory=list)  # BNs that end a removed residual branch
    selectors: list[str] = field(default_factory=list)  # BNs that become MaskedBatchNorm
    macs_before: int = 0
    macs_after: int = 0
    layers: list[dict] = field(default_factory=list)

    @property
    def pruned_channels(self) -> int:
        return int(sum((~m).sum() for m in self.masks.values()))

    def summary(self) -> list[dict]:
        """Per-BN rows: name, channels before and after, and the role of the layer."""
        return [dict(row) for row in self.layers]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "method": self.method, "ratio": self.ratio,
            "input_shapes": self.input_shapes, "options": self.options,
            "branches": self.branches, "selectors": self.selectors,
            "macs_before": self.macs_before, "macs_after": self.macs_after, "layers": self.layers,
            "masks": {k: "".join("1" if v else "0" for v in m.tolist()) for k, m in self.masks.items()},
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        if data.get("format") != FORMAT:
            raise SlimbenchValueError(f"not a slimbench plan (format {data.get('format')!r}, expected {FORMAT!r})")
        masks = {}
        for name, bits in data["masks"].items():
            if not isinstance(bits, str) or set(bits) - {"0", "1"}:
                raise SlimbenchValueError(f"plan mask for {name!r} must be a string of 0/1, got {bits!r:.40}")
            masks[name] = torch.tensor([b == "1" for b in bits], dtype=torch.bool)
        return cls(masks=masks, method=data["method"], ratio=data["ratio"],
                   input_shapes=data["input_shapes"], options=data.get("options", {}),
                   branches=list(data.get("branches", [])), selectors=list(data.get("selectors", [])),
                   macs_before=data.get("macs_before", 0), macs_after=data.get("macs_after", 0),
                   layers=data.get("layers", []))

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        return cls.from_dict(json.loads(text))


# -- making a plan --------------------------------------------------------------------------------

def make_plan(model: nn.Module, example_inputs: ExampleInputs, *, method: str = "network_slimming",
              ratio: float | None = None, target_macs: float | None = None, round_to: int = 1,
              residual: str = DEFAULT_RESIDUAL, branches: str = "keep", importance: str | Importance = "gamma",
              ignored_layers=(), layer_ratios: dict[str, float] | None = None, leaf_modules=(),
              graph: ChannelGraph | None = None, warn: bool = True, target_latency: float | None = None,
              widths: str = "channels", latency=None, **criterion_options) -> PruningPlan:
    """Decide which channels to remove; see ``slimbench.plan`` for the options.

    ``graph``: a channel graph of this model traced with the same ``residual`` mode (what
    ``slimbench.analyze`` keeps), so that planning does not trace again.
    """
    opts = check_options(unwrap(model), method=method, ratio=ratio, target_macs=target_macs,
                         round_to=round_to, residual=residual, branches=branches, importance=importance,
                         ignored_layers=ignored_layers, layer_ratios=layer_ratios or {},
                         criterion_options=criterion_options, target_latency=target_latency, widths=widths,
                         latency=latency)
    inputs = as_example_inputs(example_inputs)
    if graph is None:
        graph = build_graph(model, inputs, residual=residual, leaf_modules=leaf_modules)
    elif graph.options.get("residual", DEFAULT_RESIDUAL) != residual:
        raise SlimbenchValueError(f"the channel graph was traced with residual={graph.options.get('residual')!r}; "
                         f"a plan with residual={residual!r} needs its own (slimbench.analyze keeps one per mode)")
    plan = plan_on_graph(model, inputs, graph, opts)
    if warn:
        def alternative(**changes) -> PruningPlan:
            options = dict(method=method, ratio=ratio, target_macs=target_macs, round_to=round_to,
                           residual=residual, branches=branches, importance=importance,
                           ignored_layers=ignored_layers, layer_ratios=layer_ratios, leaf_modules=leaf_modules,
                           target_latency=target_latency, widths=widths, latency=latency, **criterion_options)
            options.update(changes)
            return make_plan(model, inputs, warn=False, **options)

        warn_if_little(graph, opts, plan, alternative)
    return plan


def plan_on_graph(model: nn.Module, inputs: tuple[Tensor, ...], graph: ChannelGraph, opts: PlanOptions) -> PruningPlan:
    """The plan that checked options ``opts`` give on ``graph`` (a trace of ``model``)."""
    source = unwrap(model)
    scores = bn_scores(graph, source, opts.importance)
    importance = class_importance(graph, scores)
    candidates, ignored = candidate_classes(graph, opts.residual, opts.ignored_layers)
    values = importance[candidates]
    if values.size and np.ptp(values) == 0:
        warnings.warn("every prunable BN gamma has the same value (an untrained model?): the channel ranking "
                      "is arbitrary; sparse-train first (slimbench.update_bn) for a meaningful plan", stacklevel=4)
    key, layers = layers_of(graph)
    check_round_to(graph, candidates, opts.round_to, key, layers)
    overrides = layer_overrides(graph, opts.layer_ratios, candidates, key)
    pool = candidates.copy()  # what the criterion ranks: layers with their own ratio are left out
    for layer, _ in overrides:
        pool[layer] = False
    criterion, base = opts.criterion, graph.macs()
    ignored_bns = {n for n, rec in graph.bns.items() if ignored[graph.class_of[rec.gids]].any()}
    kept_branches = {b.bn for b in graph.branches if b.bn in ignored_bns or any(
        m == n or m.startswith(n + ".") or not n for m in b.modules for n in opts.ignored_layers)}

    def decide(r: float | None, chosen: np.ndarray | None = None):
        # chosen: the pool's prune decision made elsewhere (latency-aware widths) instead of the criterion's
        prune = chosen.copy() if chosen is not None else \
            np.asarray(criterion.fn(importance, pool, layers, ratio=r, **opts.criterion_options), dtype=bool)
        if prune.shape != (graph.n_classes,):
            raise SlimbenchValueError(
                f"criterion {criterion.name!r} returned {prune.shape}, expected one bool per class "
                             f"({graph.n_classes})")
        prune &= pool
        for layer, layer_ratio in overrides:
            mask = np.zeros(graph.n_classes, dtype=bool)
            mask[layer] = True
            prune |= smallest(importance, mask, int(np.floor(layer_ratio * layer.size)))
        names: list[str] = []
        if opts.branches != "keep":
            threshold = criterion.threshold(importance, candidates, r)
            names = [b.bn for b in graph.branches if b.bn not in kept_branches and any(
                bool((scores[bn] <= threshold).all()) for bn in _deciding_bns(b, opts.branches, scores))]
        removed_modules, removed_spaces = removed_by(graph, names)
        prune = enforce(graph, prune, importance, candidates, opts.round_to, removed_spaces)
        return prune, names, removed_modules

    def macs(attempt) -> int:
        return graph.macs(~attempt[0][graph.class_of], attempt[2])

    if opts.target_latency is not None or opts.widths in LATENCY_WIDTHS:
        from slimbench.pruning.latency_aware import latency_search

        def finish(attempt, r):
            return _to_plan(graph, ~attempt[0][graph.class_of], attempt[1], attempt[2], criterion.name, r, inputs,
                            base, opts.record())

        return latency_search(graph, opts, decide, finish, macs, importance, pool)
    if opts.target_macs is None:
        prune, names, removed_modules = decide(opts.ratio)
        ratio = opts.ratio
    else:
        goal = opts.target_macs * base
        best = decide(0.0)
        ratio = 0.0
        if macs(best) > goal:
            most = decide(0.999)
            if macs(most) > goal:
                raise SlimbenchValueError(
                    f"target_macs={opts.target_macs} is out of reach: {criterion.name} at ratio 0.999 (pruning "
                    f"all it may) leaves {macs(most) / base:.3f} of the MACs; ask for target_macs >= "
                    f"{np.ceil(macs(most) / base * 1000) / 1000:.3f}" + _more_hint(graph, opts))
            best, ratio = bisect_ratio(decide, macs, goal, most)
        prune, names, removed_modules = best
    keep_gid = ~prune[graph.class_of]
    return _to_plan(graph, keep_gid, names, removed_modules, criterion.name,
                    None if opts.target_macs is not None else ratio, inputs, base, opts.record())


def _deciding_bns(branch, mode: str, scores: dict) -> list[str]:
    """The BNs whose emptiness removes ``branch``: its last one, or (``remove-any``) any of them."""
    if mode == "remove":
        return [branch.bn]
    return [name for name in scores if name in branch.modules]


def _more_hint(graph: ChannelGraph, opts: PlanOptions) -> str:
    coupled = graph.prunable_classes() & graph.class_residual
    if opts.residual == "keep" and coupled.any():
        return "; residual='shared' or 'select' may also prune the channels joined by residual adds"
    return ""


def _to_plan(graph, keep_gid, branch_names, removed_modules, method, ratio, inputs, base, options):
    masks, layers = {}, []
    for name, rec in graph.bns.items():
        keep = np.zeros(len(rec.gids), dtype=bool) if name in removed_modules else keep_gid[rec.gids]
        if not keep.all() or rec.selector:
            masks[name] = torch.from_numpy(keep.copy())
        role = ("removed branch" if name in removed_modules else "selection" if rec.selector
                else "residual" if graph.class_residual[graph.class_of[rec.gids]].any() else "plain")
        layers.append({"bn": name, "before": len(rec.gids), "after": int(keep.sum()), "role": role})
    return PruningPlan(
        masks=masks, method=method, ratio=None if ratio is None else float(ratio),
        input_shapes=[list(t.shape) for t in inputs], options=options, branches=branch_names,
        selectors=[n for n, r in graph.bns.items() if r.selector and n not in removed_modules],
        macs_before=base, macs_after=graph.macs(keep_gid, removed_modules), layers=layers,
    )


def keep_from_plan(graph: ChannelGraph, plan: PruningPlan) -> tuple[np.ndarray, frozenset[str]]:
    """Per-channel keep decisions that ``plan`` implies on ``graph``; errors on inconsistent plans."""
    unknown = sorted(set(plan.masks) - set(graph.bns))
    if unknown:
        raise SlimbenchValueError(f"the plan prunes BatchNorm {unknown[0]!r}, which this model does not have "
                         "(was the plan made for another model?)")
    missing = [b for b in plan.branches if b not in {br.bn for br in graph.branches}]
    if missing:
        raise SlimbenchValueError(f"the plan removes the residual branch ending at {missing[0]!r}, but that is "
                         "not a removable branch of this model")
    adds: dict[str, str] = {}
    for branch in (b for b in graph.branches if b.bn in plan.branches):
        other = adds.setdefault(branch.add_node, branch.bn)
        if other != branch.bn:
            raise SlimbenchValueError(
                f"the plan removes both residual branches {other!r} and {branch.bn!r} of the same add; "
                "at most one operand of an add can go")
    removed_modules, _ = removed_by(graph, plan.branches)
    prune = np.zeros(graph.n_classes, dtype=bool)
    seen = np.zeros(graph.n_classes, dtype=bool)
    for name, mask in plan.masks.items():
        if name in removed_modules:
            continue
        rec = graph.bns[name]
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(rec.gids),):
            raise SlimbenchValueError(
                f"plan mask for {name!r} has {mask.size} entries; the BN has {len(rec.gids)} channels")
        if not mask.any():
            raise SlimbenchValueError(f"the plan removes every channel of {name!r}; a layer must keep at least one "
                             "(to drop a whole residual branch, plan with branches='remove')")
        classes = graph.class_of[rec.gids]
        prune[classes[~mask]] = True
        seen[classes] = True
    for name, rec in graph.bns.items():  # every BN of a pruned class must agree
        if name in removed_modules:
            continue
        classes = graph.class_of[rec.gids]
        mask = np.asarray(plan.masks[name], dtype=bool) if name in plan.masks else np.ones(len(classes), bool)
        clash = prune[classes] & mask
        if clash.any():
            i = int(np.flatnonzero(clash)[0])
            raise SlimbenchValueError(f"the plan keeps channel {i} of {name!r} but prunes a channel coupled to it "
                             "in another BatchNorm; coupled channels must be pruned together")
    bad = np.flatnonzero(prune & np.array([r is not None for r in graph.class_reason]))
    if bad.size:
        reason = graph.class_reason[bad[0]]
        bn = next(n for n, r in graph.bns.items() if bad[0] in graph.class_of[r.gids])
        raise SlimbenchValueError(f"the plan prunes a channel of {bn!r} that cannot be removed: {reason}")
    return ~prune[graph.class_of], removed_modules
