"""PruningPlan: which BN channels go, as plain data; and how a plan is made from a model.

A plan is JSON-serialisable: keep-masks per BatchNorm, the residual branches removed, and the
options it was made with. ``slimbench.prune`` re-derives every conv/linear slice from it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from slimbench.analysis.graph import ChannelGraph, build_graph
from slimbench.core.inputs import ExampleInputs, as_example_inputs, unwrap
from slimbench.pruning.criteria import METHODS, global_threshold

__all__ = ["PruningPlan", "make_plan", "keep_from_plan", "RESIDUAL_MODES", "BRANCH_MODES"]

RESIDUAL_MODES = ("keep", "shared", "select")
BRANCH_MODES = ("keep", "remove")
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
    _graph: ChannelGraph | None = field(default=None, repr=False, compare=False)
    _model_id: int | None = field(default=None, repr=False, compare=False)

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
            raise ValueError(f"not a slimbench plan (format {data.get('format')!r}, expected {FORMAT!r})")
        masks = {}
        for name, bits in data["masks"].items():
            if not isinstance(bits, str) or set(bits) - {"0", "1"}:
                raise ValueError(f"plan mask for {name!r} must be a string of 0/1, got {bits!r:.40}")
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

def _check_options(method, ratio, target_macs, round_to, residual, branches, delta) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if target_macs is None:
        if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"ratio must be a number in [0, 1) (the fraction of prunable channels "
                             f"to remove), got {ratio!r}")
    elif not isinstance(target_macs, (int, float)) or not 0 < target_macs <= 1:
        raise ValueError(f"target_macs must be in (0, 1], a fraction of the unpruned MACs; got {target_macs!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}")
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if branches not in BRANCH_MODES:
        raise ValueError(f"branches must be one of {BRANCH_MODES}, got {branches!r}")
    if branches == "remove" and method != "network_slimming":
        raise ValueError("branches='remove' compares a branch's gammas with network slimming's global "
                         "threshold; use it with method='network_slimming'")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _importance(graph: ChannelGraph, model: nn.Module) -> np.ndarray:
    sums = np.zeros(graph.n_classes)
    counts = np.zeros(graph.n_classes)
    modules = dict(unwrap(model).named_modules())
    for name, rec in graph.bns.items():
        weight = modules[name].weight
        gamma = (np.abs(weight.detach().float().cpu().numpy()) if weight is not None
                 else np.ones(len(rec.gids)))
        np.add.at(sums, graph.class_of[rec.gids], gamma)
        np.add.at(counts, graph.class_of[rec.gids], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)


def _layers(graph: ChannelGraph) -> tuple[np.ndarray, list[np.ndarray]]:
    """Layer index per class (the first space it touches) and the classes of each layer."""
    key = np.full(graph.n_classes, np.iinfo(np.int64).max)
    np.minimum.at(key, graph.class_of, graph.space_of)
    order = np.argsort(key, kind="stable")
    _, starts = np.unique(key[order], return_index=True)
    return key, np.split(order, starts[1:])


def _enforce(graph, prune, importance, candidates, round_to, removed_spaces) -> np.ndarray:
    """Round counts, respect grouped convs and selections, and keep >= 1 channel per space."""
    prune = prune.copy()
    key, layers = _layers(graph)
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
    for rec in graph.convs.values():
        if rec.role != "joined" or rec.group_size == 1:
            continue
        classes = graph.class_of[rec.out_gids].reshape(rec.groups, rec.group_size)
        kept = (~prune[classes]).sum(1)
        k = int(np.clip(round(kept.mean()), 1, rec.group_size))
        for block in classes:
            order = block[np.argsort(-importance[block], kind="stable")]
            prune[order[:k]] = False
            prune[order[k:]] = prune[order[k:]] | candidates[order[k:]]
    keep_gid = ~prune[graph.class_of]
    for rec in graph.bns.values():
        if rec.selector:
            dropped = graph.class_of[rec.gids][~keep_gid[rec.in_gids]]
            prune[dropped] = True
    keep_gid = ~prune[graph.class_of]
    kept_per_space = np.bincount(graph.space_of, weights=keep_gid, minlength=len(graph.spaces))
    for space in np.flatnonzero(kept_per_space == 0):
        if space in removed_spaces:
            continue
        classes = np.unique(graph.class_of[graph.space_of == space])
        prune[classes[np.argmax(importance[classes])]] = False
    return prune


def _removed(graph: ChannelGraph, names: list[str]) -> tuple[frozenset[str], set[int]]:
    modules = frozenset().union(*(b.modules for b in graph.branches if b.bn in names)) if names else frozenset()
    spaces = {i for i, (_, owner, _) in enumerate(graph.spaces) if owner in modules}
    return modules, spaces


def make_plan(model: nn.Module, example_inputs: ExampleInputs, *, method: str = "network_slimming",
              ratio: float = 0.5, target_macs: float | None = None, round_to: int = 1,
              residual: str = "keep", branches: str = "keep", delta: float | None = None,
              leaf_modules=(), graph: ChannelGraph | None = None) -> PruningPlan:
    """Decide which channels to remove; see ``slimbench.plan`` for the options."""
    _check_options(method, ratio, target_macs, round_to, residual, branches, delta)
    inputs = as_example_inputs(example_inputs)
    graph = graph or build_graph(model, inputs, residual=residual, leaf_modules=leaf_modules)
    importance = _importance(graph, model)
    candidates = graph.prunable_classes()
    if residual != "shared":
        candidates &= ~graph.class_residual
    values = importance[candidates]
    if values.size and np.ptp(values) == 0:
        warnings.warn("every prunable BN gamma has the same value (an untrained model?): the channel ranking "
                      "is arbitrary; sparse-train first (slimbench.update_bn) for a meaningful plan", stacklevel=3)
    key, layers = _layers(graph)
    criterion = METHODS[method]
    base = graph.macs()

    def decide(r: float):
        prune = criterion(importance, candidates, layers, ratio=r, delta=delta)
        names: list[str] = []
        if branches == "remove":
            threshold = global_threshold(importance, candidates, r)
            modules = dict(unwrap(model).named_modules())
            for b in graph.branches:
                gamma = modules[b.bn].weight.detach().abs()
                if bool((gamma <= threshold).all()):
                    names.append(b.bn)
        removed_modules, removed_spaces = _removed(graph, names)
        prune = _enforce(graph, prune, importance, candidates, round_to, removed_spaces)
        return prune, names, removed_modules

    if target_macs is None:
        prune, names, removed_modules = decide(float(ratio))
    else:
        low, high = 0.0, 0.999
        prune, names, removed_modules = decide(0.0)
        if graph.macs(~prune[graph.class_of], removed_modules) > target_macs * base:
            for _ in range(30):
                mid = (low + high) / 2
                attempt = decide(mid)
                if graph.macs(~attempt[0][graph.class_of], attempt[2]) <= target_macs * base:
                    prune, names, removed_modules, high = *attempt, mid
                else:
                    low = mid
            if graph.macs(~prune[graph.class_of], removed_modules) > target_macs * base:
                raise ValueError(f"target_macs={target_macs} is out of reach: pruning every prunable "
                                 f"channel leaves {graph.macs(~prune[graph.class_of], removed_modules) / base:.3f} "
                                 "of the MACs")
        ratio = high if target_macs is not None else ratio
    keep_gid = ~prune[graph.class_of]
    return _to_plan(graph, keep_gid, names, removed_modules, method, ratio, inputs, base,
                    {"residual": residual, "branches": branches, "round_to": round_to,
                     "target_macs": target_macs, "delta": delta}, model)


def _to_plan(graph, keep_gid, branch_names, removed_modules, method, ratio, inputs, base, options, model):
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
        _graph=graph, _model_id=id(unwrap(model)),
    )


def keep_from_plan(graph: ChannelGraph, plan: PruningPlan) -> tuple[np.ndarray, frozenset[str]]:
    """Per-channel keep decisions that ``plan`` implies on ``graph``; errors on inconsistent plans."""
    unknown = sorted(set(plan.masks) - set(graph.bns))
    if unknown:
        raise ValueError(f"the plan prunes BatchNorm {unknown[0]!r}, which this model does not have "
                         "(was the plan made for another model?)")
    missing = [b for b in plan.branches if b not in {br.bn for br in graph.branches}]
    if missing:
        raise ValueError(f"the plan removes the residual branch ending at {missing[0]!r}, but that is "
                         "not a removable branch of this model")
    removed_modules, _ = _removed(graph, plan.branches)
    prune = np.zeros(graph.n_classes, dtype=bool)
    seen = np.zeros(graph.n_classes, dtype=bool)
    for name, mask in plan.masks.items():
        if name in removed_modules:
            continue
        rec = graph.bns[name]
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(rec.gids),):
            raise ValueError(f"plan mask for {name!r} has {mask.size} entries; the BN has {len(rec.gids)} channels")
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
            raise ValueError(f"the plan keeps channel {i} of {name!r} but prunes a channel coupled to it "
                             "in another BatchNorm; coupled channels must be pruned together")
    bad = np.flatnonzero(prune & np.array([r is not None for r in graph.class_reason]))
    if bad.size:
        reason = graph.class_reason[bad[0]]
        bn = next(n for n, r in graph.bns.items() if bad[0] in graph.class_of[r.gids])
        raise ValueError(f"the plan prunes a channel of {bn!r} that cannot be removed: {reason}")
    return ~prune[graph.class_of], removed_modules
