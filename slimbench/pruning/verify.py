"""Self-verification of ``prune``: the pruned model must compute what the zeroed model computes.

After surgery, the pruned model and the zeroed reference (``zero_bn_channels``: gamma = beta = 0 on
every pruned channel) run on the example inputs in eval mode. In float64 where that is cheap
(the pruned model is cast in place and back, which is exact), else in the model's own dtype at the
contract's tolerance (1e-4 of the largest output magnitude). The zeroed reference is no deep copy:
the caller's model runs through ``torch.func.functional_call`` on one copy of its tensors (cast to
float64, or only the masked gammas / betas copied in the model's dtype), the only extra copy.

When ``prune`` made the plan itself, ``replan_without_frozen`` then plans again with the frozen BNs in
``ignored_layers`` so that the other groups are pruned as much as was asked, and verifies that too.

On a mismatch or a failure to run, the plan's pruned channel groups are bisected: a *group* is a
set of pruned channel classes that share a channel space (all pruned channels of one layer, or of
a coupled residual group), and each removed residual branch is one group too. Restoring a group
keeps all its channels (it is *frozen*). Groups are frozen one culprit at a time (log2(n) checks
each) until the model passes. The plan the result was built from, with the record of what was
checked and frozen (``plan.options["verification"]``), is ``pruned.slimbench_plan``; the caller's
plan is not changed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from slimbench.analysis.graph import DEFAULT_RESIDUAL, ChannelGraph
from slimbench.core.errors import SlimbenchError, SlimbenchRuntimeError, SlimbenchValueError
from slimbench.core.inputs import unwrap
from slimbench.pruning.plan import PruningPlan, keep_from_plan

__all__ = ["verify_pruned", "check", "attach_plan", "FLOAT64_MAX_MACS", "FLOAT32_RTOL", "FLOAT64_RTOL"]

FLOAT32_RTOL = 1e-4  # the equivalence contract's tolerance, relative to max |output|
FLOAT64_RTOL = 1e-9
FLOAT64_MAX_MACS = 2_000_000_000  # batch MACs up to which a float64 check counts as cheap
FLOAT64_MAX_PARAMS = 50_000_000


@dataclasses.dataclass
class Check:
    ok: bool
    error: float  # relative max difference (inf when the pruned model failed to run)
    reason: str
    dtype: str


def _cast(model: nn.Module, dtype: torch.dtype | None) -> dict:
    """Cast floating parameters and buffers in place (identity kept); returns what to restore."""
    saved = {}
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point() and id(t) not in saved:
            saved[id(t)] = (t, t.dtype)
            if dtype is not None:
                t.data = t.data.to(dtype)
    return saved


def _restore(saved: dict) -> None:
    for t, dtype in saved.values():
        t.data = t.data.to(dtype)


def _run(model: nn.Module, inputs: tuple[Tensor, ...]) -> list[Tensor]:
    """``model``'s outputs in eval mode, run on a hookless shell (the user's hooks, copied into the
    pruned model, see none of the checking calls)."""
    shell = _shell(model).eval()
    with torch.no_grad():
        return [t for t in tree_leaves(shell(*inputs)) if isinstance(t, Tensor)]


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def zeroed_outputs(model: nn.Module, plan: PruningPlan, inputs: tuple[Tensor, ...],
                   dtype: torch.dtype | None) -> list[Tensor]:
    """The outputs of ``zero_bn_channels(model, plan)`` (cast to ``dtype``) in eval mode.

    Nothing of the caller's model runs: a shell copy of its module tree (parameters shared, not
    copied; hooks dropped, so the caller's hooks never see these calls; attribute writes land on the
    shell) runs through ``torch.func.functional_call`` on the parameters (copied only where they
    change or are cast) and on copies of the buffers (a forward may write those)."""
    source = _shell(unwrap(model))
    tensors: dict[str, Tensor] = {}
    for name, t in source.named_parameters():
        t = t.detach()
        tensors[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    for name, t in source.named_buffers():
        tensors[name] = t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach().clone()
    for name, mask in plan.masks.items():
        drop = None
        for key in (f"{name}.weight", f"{name}.bias"):
            t = tensors.get(key)
            if t is None or t.shape != (len(mask),):
                raise SlimbenchValueError(
                    f"the plan masks {len(mask)} channels of BatchNorm {name!r}, which has no affine "
                    f"{key.rsplit('.', 1)[1]} of that size in this model (was the plan made for another model?)")
            if drop is None:
                drop = torch.as_tensor(~np.asarray(mask, dtype=bool)).to(t.device)
            t = t.clone()  # a BN's gamma / beta: small; the model's own tensor is never written
            t[drop] = 0
            tensors[key] = t
    source.eval()
    with torch.no_grad():
        out = torch.func.functional_call(source, tensors, inputs, strict=False, tie_weights=True)
    return [t for t in tree_leaves(out) if isinstance(t, Tensor)]


def _shell(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree that shares its parameters and buffers, without hooks."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    shell = copy.deepcopy(model, memo=shared)
    for module in shell.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks, module._forward_hooks_with_kwargs,
                      module._forward_pre_hooks_with_kwargs, module._forward_hooks_always_called):
            hooks.clear()
    return shell


def check(pruned: nn.Module, reference: Callable[[tuple[Tensor, ...], torch.dtype | None], list[Tensor]],
          inputs: tuple[Tensor, ...], double: bool) -> Check:
    """Run ``pruned`` and ``reference(inputs, dtype)`` (the zeroed model's outputs) on ``inputs``; compare."""
    dtype = torch.float64 if double else None
    run_inputs = tuple(t.double() if double and t.is_floating_point() else t for t in inputs)
    try:
        expected = reference(run_inputs, dtype)
    except SlimbenchValueError:
        raise
    except Exception as err:
        if double:  # float64 may not be supported by some op or constant: check in the model's dtype
            return check(pruned, reference, inputs, double=False)
        raise SlimbenchRuntimeError(
            f"verification cannot run the zeroed reference model on inputs of shape "
            f"{[tuple(t.shape) for t in inputs]} ({_short(err)}); pass example_inputs the model accepts, "
            "or verify=False to skip the check") from err
    saved = _cast(pruned, dtype)
    try:
        got = _run(pruned, run_inputs)
    except Exception as err:
        _restore(saved)
        if double:  # a float32 constant or op in the pruned graph may refuse float64: retry in its dtype
            return check(pruned, reference, inputs, double=False)
        return Check(False, math.inf, f"the pruned model fails to run ({_short(err)})", str(dtype))
    _restore(saved)
    dtype_name = "float64" if double else str(expected[0].dtype).replace("torch.", "") if expected else "float32"
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected, strict=True)):
        return Check(False, math.inf, "the pruned model's outputs have other shapes than the zeroed model's "
                     f"({[tuple(t.shape) for t in got]} vs {[tuple(t.shape) for t in expected]})", dtype_name)
    floats = [(a, b) for a, b in zip(got, expected, strict=True) if b.is_floating_point()]
    scale = max((b.abs().max().item() for _, b in floats if b.numel()), default=0.0) or 1e-12
    diff = max(((a - b).abs().max().item() for a, b in floats if b.numel()), default=0.0)
    exact = all(torch.equal(a, b) for a, b in zip(got, expected, strict=True) if not b.is_floating_point())
    error = diff / scale if math.isfinite(diff) else math.inf
    limit = FLOAT64_RTOL if double else FLOAT32_RTOL
    if error <= limit and exact:
        return Check(True, error, "", dtype_name)
    return Check(False, error, f"outputs differ from the zeroed model by {error:.3g} of their largest "
                 f"magnitude ({dtype_name}; limit {limit:g})", dtype_name)


def _groups(graph: ChannelGraph, keep: np.ndarray, removed: frozenset[str], plan: PruningPlan) -> list[tuple]:
    """Units to freeze: pruned classes joined through shared spaces; removed branches."""
    owners = np.array([owner for _, owner, _ in graph.spaces])
    in_removed = np.isin(owners, list(removed))[graph.space_of] if removed else np.zeros(graph.n_gids, bool)
    pruned_classes = np.unique(graph.class_of[~keep & ~in_removed])
    parent = {int(c): int(c) for c in pruned_classes}

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    for space in np.unique(graph.space_of[np.isin(graph.class_of, pruned_classes)]):
        classes = [int(c) for c in np.unique(graph.class_of[graph.space_of == space]) if int(c) in parent]
        for c in classes[1:]:
            parent[find(c)] = find(classes[0])
    units: dict[int, list[int]] = {}
    for c in parent:
        units.setdefault(find(c), []).append(c)
    groups = [("classes", tuple(sorted(cs))) for cs in units.values()]
    return groups + [("branch", b) for b in plan.branches]


def _describe(graph: ChannelGraph, group: tuple) -> dict:
    if group[0] == "branch":
        return {"kind": "branch", "bns": [group[1]], "channels": None}
    classes = np.array(group[1])
    bns = [n for n, r in graph.bns.items() if np.isin(graph.class_of[r.gids], classes).any()]
    return {"kind": "channels", "bns": bns, "channels": int(np.isin(graph.class_of, classes).sum())}


def _plan_without(plan: PruningPlan, graph: ChannelGraph, keep: np.ndarray, frozen: list[tuple]) -> PruningPlan:
    """``plan`` with every channel of the ``frozen`` groups kept (and their branches not removed)."""
    keep = keep.copy()
    restored = set()
    for kind, what in frozen:
        if kind == "branch":
            restored.add(what)
        else:
            keep |= np.isin(graph.class_of, np.array(what))
    branches = [b for b in plan.branches if b not in restored]
    kept_branch_modules = frozenset().union(*(b.modules for b in graph.branches if b.bn in branches))
    gone_branch_modules = frozenset().union(*(b.modules for b in graph.branches if b.bn in restored))
    masks = {}
    for name, rec in graph.bns.items():
        if name in kept_branch_modules:
            mask = np.zeros(len(rec.gids), bool)
        elif name in gone_branch_modules:
            mask = np.ones(len(rec.gids), bool)
        elif name in plan.masks:
            mask = np.asarray(plan.masks[name], bool) | keep[rec.gids]
        else:
            continue
        if not mask.all() or name in plan.masks:
            masks[name] = torch.from_numpy(mask.copy())
    layers = [{**row, "after": int(masks[row["bn"]].sum()) if row.get("bn") in masks else row.get("before")}
              for row in plan.layers]
    new = dataclasses.replace(plan, masks=masks, branches=branches, layers=layers, options=dict(plan.options))
    keep_new, removed_new = keep_from_plan(graph, new)
    new.macs_after = graph.macs(keep_new, removed_new)
    return new


def verify_pruned(plan: PruningPlan, result: nn.Module, graph: ChannelGraph, inputs: tuple[Tensor, ...],
                  build: Callable[[PruningPlan, bool], nn.Module],
                  reference: Callable[[PruningPlan, tuple[Tensor, ...], torch.dtype | None], list[Tensor]], *,
                  checkable: bool = True,
                  fold_beta: bool = False, warn: bool = True) -> nn.Module:
    """Check ``result`` (built from ``plan``); on failure freeze the culprit groups and rebuild.

    ``build(plan, fold_beta)`` runs the surgery; ``reference(plan, inputs, dtype)`` gives the zeroed
    model's outputs (``zeroed_outputs``).
    ``checkable=False`` (beta folded into ``result``) checks an unfolded build instead.
    """
    params = sum(p.numel() for p in result.parameters())
    batch = inputs[0].shape[0] if inputs and inputs[0].dim() else 1
    double = plan.macs_before * batch <= FLOAT64_MAX_MACS and params <= FLOAT64_MAX_PARAMS

    def attempt(p: PruningPlan) -> tuple[Check, nn.Module | None]:
        try:
            model = build(p, False)
        except Exception as err:  # surgery itself refused this cut
            return Check(False, math.inf, f"surgery fails ({_short(err)})", ""), None
        return check(model, lambda x, dtype: reference(p, x, dtype), inputs, double), model

    first = check(result, lambda x, dtype: reference(plan, x, dtype), inputs, double) if checkable else \
        attempt(plan)[0]
    record = {"checked": first.dtype or ("float64" if double else "float32"), "max_rel_err": first.error,
              "frozen": []}
    if first.ok:
        return attach_plan(result, plan, record)
    keep, removed = keep_from_plan(graph, plan)
    active = _groups(graph, keep, removed, plan)
    frozen: list[tuple] = []
    failing, candidate = first, None
    while True:
        if not active:
            raise SlimbenchRuntimeError(
                f"prune cannot produce a model that computes what the zeroed model computes ({first.reason}), "
                "even with every pruned channel group kept (is the model's eval-mode output random?). Pass "
                "verify=False to get the unverified model.")
        lo, hi, why = 0, len(active), failing.reason  # pruning active[:lo] passes, active[:hi] fails
        while hi - lo > 1:
            mid = (lo + hi) // 2
            outcome, _ = attempt(_plan_without(plan, graph, keep, frozen + active[mid:]))
            if outcome.ok:
                lo = mid
            else:
                hi, why = mid, outcome.reason
        culprit = active.pop(hi - 1)
        frozen.append(culprit)
        record["frozen"].append({**_describe(graph, culprit), "reason": why})
        failing, candidate = attempt(_plan_without(plan, graph, keep, frozen))
        if failing.ok:
            break
    if not active:
        first_frozen = record["frozen"][0]
        raise SlimbenchRuntimeError(
            "prune: every pruned channel group changes the model's outputs, so nothing of this plan can be "
            f"kept (first: {', '.join(first_frozen['bns'][:3])}: {first_frozen['reason']}). See "
            "slimbench.explain(model, x) for what the channel graph cannot prove, or pass verify=False to get "
            "the unverified model.")
    final = _plan_without(plan, graph, keep, frozen)
    record["max_rel_err"] = failing.error
    if warn:
        warn_frozen(record["frozen"], stacklevel=4)
    return attach_plan(build(final, True) if fold_beta else candidate, final, record)


def warn_frozen(frozen: list[dict], replanned: dict | None = None, stacklevel: int = 3) -> None:
    """The warning that verification kept the ``frozen`` groups whole (and re-planned the rest)."""
    again = (" The plan was then made again without them (ignored_layers), so the rest is pruned as asked"
             if replanned else "")
    warnings.warn(
        "prune verified its result against the zeroed model and kept all channels of "
        + "; ".join(f"{', '.join(f['bns'][:3])} ({f['reason']})" for f in frozen[:3])
        + (f" and {len(frozen) - 3} more groups" if len(frozen) > 3 else "")
        + f": pruning them changes the outputs.{again} pruned.slimbench_plan is the plan the model was built from",
        stacklevel=stacklevel)


def attach_plan(model: nn.Module, plan: PruningPlan, record: dict | None = None) -> nn.Module:
    """Set ``model.slimbench_plan``: a copy of ``plan`` (with the verification ``record``)."""
    options = {**plan.options, "verification": record} if record is not None else dict(plan.options)
    clean = dataclasses.replace(plan, options=options)
    model.slimbench_plan = clean
    return model


MAX_REPLANS = 3
RATIO_MAX = 0.999  # ratio must stay below 1


def replan_without_frozen(result: nn.Module, graph: ChannelGraph, options: dict,
                          make: Callable[[dict], PruningPlan], verified: Callable[[PruningPlan], nn.Module],
                          stacklevel: int = 4) -> nn.Module:
    """After verification froze groups of a plan ``prune`` made itself: make the plan again with the
    frozen BNs in ``ignored_layers`` (a ``ratio`` scaled so that as many channels go as first asked;
    a ``target_macs`` is met by the others anyway), build and verify it again; at most ``MAX_REPLANS``
    times. ``make(options)`` plans, ``verified(plan)`` builds and verifies without warning. The record
    of every freeze and of the re-plan is in ``options["verification"]``; one warning says what was kept.
    """
    from slimbench.pruning.selection import candidate_classes

    frozen = list(result.slimbench_plan.options["verification"]["frozen"])
    if not frozen:
        return result
    first = result.slimbench_plan
    user_ignored = list(first.options.get("ignored_layers", []))
    residual = first.options.get("residual", DEFAULT_RESIDUAL)
    replanned = None
    for _ in range(MAX_REPLANS):
        names = sorted({bn for f in frozen for bn in f["bns"]} - set(user_ignored))
        ignored = [*user_ignored, *names]
        opts = {**options, "ignored_layers": ignored}
        if opts.get("layer_ratios"):
            opts["layer_ratios"] = {k: v for k, v in opts["layer_ratios"].items() if k not in names}
        if first.ratio is not None:
            before = int(candidate_classes(graph, residual, tuple(user_ignored))[0].sum())
            after = int(candidate_classes(graph, residual, tuple(ignored))[0].sum())
            if after == 0:
                break
            opts["ratio"] = min(first.ratio * before / after, RATIO_MAX)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = make(opts)
                if plan.pruned_channels == 0 and not plan.branches:
                    break
                again = verified(plan)
        except SlimbenchError:  # the re-plan is refused (nothing left, ...): keep the first repaired result
            break
        replanned = {"ignored_layers": names, "ratio": opts.get("ratio")}
        result = again
        new = result.slimbench_plan.options["verification"]["frozen"]
        frozen += new
        if not new:
            break
    if replanned is not None:
        record = {**result.slimbench_plan.options["verification"], "frozen": frozen, "replanned": replanned}
        result.slimbench_plan.options["verification"] = record
    warn_frozen(frozen, replanned, stacklevel=stacklevel)
    return result
