"""Saving and loading pruned models without pickled code.

A checkpoint is a plain dict of tensors and strings, loaded with ``weights_only=True``:
``{"format", "state_dict", "plan" (JSON, optional), "input_shapes"}``. A pruned model is rebuilt
from the *unpruned* architecture: with the plan when the checkpoint has one (exact), otherwise
from the shapes in the state dict (netslim's way).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, fx, nn

from slimbench.analysis.graph import build_graph
from slimbench.core.atomic import atomic_path
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import ExampleInputs, as_example_inputs, unwrap
from slimbench.pruning.plan import PruningPlan
from slimbench.pruning.surgery import prune

__all__ = ["save_pruned_model", "load_pruned_model", "atomic_save", "read_checkpoint"]

FORMAT = "slimbench.pruned/1"


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def save_pruned_model(model: nn.Module, path: str | os.PathLike, *, plan: PruningPlan | None = None) -> Path:
    """Write ``model``'s state dict and the plan that made it atomically.

    A model returned by ``prune`` carries that plan (``model.slimbench_plan``: after verification,
    and composed over several pruning passes, so always against the original architecture); it is
    saved in preference to ``plan``, which may be the plan of the last pass only.
    """
    inner = unwrap(model)
    carried = getattr(inner, "slimbench_plan", None)
    if isinstance(carried, PruningPlan) and (plan is None or isinstance(plan, PruningPlan)):
        if plan is not None and plan.to_dict()["masks"] != carried.to_dict()["masks"] and \
                carried.options.get("passes", 1) == 1:
            warnings.warn("save_pruned_model: plan= differs from the plan the model was built from "
                          "(model.slimbench_plan: prune's verification kept some channels); saving the latter",
                          stacklevel=2)
        plan = carried
    payload = {"format": FORMAT, "state_dict": inner.state_dict()}
    if plan is not None:
        payload["plan"] = plan.to_json()
        payload["input_shapes"] = plan.input_shapes
        # branches are removed unless the model still holds them (remove_branches=False)
        payload["branches_removed"] = not plan.branches or isinstance(inner, fx.GraphModule)
    return atomic_save(payload, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a file written by "
                                "torch.save / slimbench train")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "weights_only" in str(err) or "Unsupported global" in str(err):
            raise SlimbenchValueError(
                f"checkpoint {path}: refusing to load, it contains pickled objects other than tensors; "
                             "code in a checkpoint is never run (re-save it with torch.save(model.state_dict()))"
                             ) from err
        raise SlimbenchValueError(f"checkpoint {path}: not a readable torch file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(data, Mapping):
        raise SlimbenchValueError(f"checkpoint {path}: holds a {type(data).__name__}, expected a dict (a state dict "
                         "or a slimbench checkpoint)")
    return dict(data)


def _strip_module_prefix(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """DataParallel / DDP save ``module.``-prefixed keys; the unwrapped model has none."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _read(path_or_state_dict) -> dict:
    """A checkpoint as ``{"state_dict": ..., (plan keys)}``; accepts what ``get_model`` accepts: a state
    dict, ``{"state_dict": ...}`` or ``{"model": ...}`` wrappers, and DDP's ``module.`` prefix."""
    data = dict(path_or_state_dict) if isinstance(path_or_state_dict, Mapping) else read_checkpoint(path_or_state_dict)
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), Mapping):
            state = data[key]
            break
    else:
        state = data
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise SlimbenchValueError(
            "checkpoint is neither a slimbench checkpoint nor a state dict of tensors (also looked "
                         "in its 'state_dict' and 'model' entries)")
    out = {k: v for k, v in data.items() if k not in ("state_dict", "model")} if state is not data else {}
    return {**out, "state_dict": _strip_module_prefix(state)}


def _kept_count(owner: str, kind: str, size: int, modules: dict, state: Mapping[str, Tensor]) -> int:
    if kind not in ("conv", "linear"):
        return size
    key = f"{owner}.weight"
    if key not in state:
        raise SlimbenchValueError(f"state dict has no entry {key!r} for {type(modules[owner]).__name__} {owner!r}; "
                         "was it saved from this architecture?")
    module = modules[owner]
    weight = state[key]
    count = weight.shape[1] * module.groups if getattr(module, "transposed", False) else weight.shape[0]
    if count > size:
        raise SlimbenchValueError(f"{key} has {count} output channels; the unpruned model has only {size}")
    return int(count)


def _plan_from_shapes(model: nn.Module, state: Mapping[str, Tensor], inputs) -> PruningPlan:
    """Keep-masks with the channel counts the state dict shows: the first channels of each space.

    Which original channels survived does not matter for the rebuilt architecture, only how many
    of each conv's output channels did; keeping the first ones of every channel space keeps coupled
    spaces (residual adds, DenseNet concats) consistent; a grouped conv's outputs keep the first ones of
    each group (its groups keep equal counts). Residual branches whose modules are absent
    from the state dict were removed; a ``MaskedBatchNorm``'s ``index`` says which channels it reads.
    """
    residual = "select" if any(k.endswith(".index") for k in state) else "keep"
    graph = build_graph(model, inputs, residual=residual)
    modules = dict(unwrap(model).named_modules())
    present = {k.rpartition(".")[0] for k in state}
    stateful = {n for n, m in modules.items() if any(True for _ in m.parameters(recurse=False))
                or any(True for _ in m.buffers(recurse=False))}
    branches = [b.bn for b in graph.branches if not ((b.modules & stateful) & present)]
    removed = frozenset().union(*(b.modules for b in graph.branches if b.bn in branches))
    keep = np.ones(graph.n_gids, dtype=bool)
    for space, (kind, owner, size) in enumerate(graph.spaces):
        gids = np.flatnonzero(graph.space_of == space)
        if owner in removed:
            continue
        count, conv = _kept_count(owner, kind, size, modules, state), graph.convs.get(owner)
        if conv is not None and conv.role == "grouped":  # a grouped conv keeps as many channels per group
            keep[gids] = np.arange(len(gids)) % conv.group_size < count // conv.groups
        else:
            keep[gids] = np.arange(len(gids)) < count
    masks = {}
    for name, rec in graph.bns.items():  # selectors last: they read the other spaces' kept channels
        if name in removed or not rec.selector:
            continue
        kept_in = np.flatnonzero(keep[rec.in_gids])
        mask = keep[rec.in_gids].copy()
        if f"{name}.index" in state:
            index = state[f"{name}.index"].numpy()
            if index.size and (index.min() < 0 or index.max() >= kept_in.size):
                raise SlimbenchValueError(
                    f"{name}.index selects channel {int(index.max())} of an input with {kept_in.size}")
            mask = np.zeros(len(rec.in_gids), dtype=bool)
            mask[kept_in[index]] = True
        keep[rec.gids] = mask
    for name, rec in graph.bns.items():
        if name in removed:
            masks[name] = torch.zeros(len(rec.gids), dtype=torch.bool)
            continue
        key = f"{name}.weight" if f"{name}.weight" in state else f"{name}.running_mean"
        if key not in state:
            raise SlimbenchValueError(f"state dict has no entry for BatchNorm {name!r} ({name}.weight); "
                             "was it saved from this architecture?")
        mask = keep[rec.gids]
        if not mask.all() or rec.selector:
            masks[name] = torch.from_numpy(mask.copy())
    plan = PruningPlan(masks=masks, method="from_shapes", ratio=None, branches=branches,
                       selectors=[n for n, r in graph.bns.items() if r.selector and n not in removed],
                       input_shapes=[list(t.shape) for t in inputs], options={"residual": residual})
    return plan


def _check_state(pruned: nn.Module, state: Mapping[str, Tensor]) -> None:
    expected = pruned.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise SlimbenchValueError(f"checkpoint is missing {key!r} (expected shape {tuple(value.shape)}); "
                             "truncated, or saved from another model?")
        if tuple(state[key].shape) != tuple(value.shape):
            raise SlimbenchValueError(f"checkpoint entry {key!r} has shape {tuple(state[key].shape)}, the pruned "
                             f"architecture expects {tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise SlimbenchValueError(f"checkpoint has an entry the pruned model lacks: {extra[0]!r}")


def load_pruned_model(model_or_builder: nn.Module | Callable[[], nn.Module],
                      path_or_state_dict: str | os.PathLike | Mapping[str, Tensor], *,
                      example_inputs: ExampleInputs | None = None) -> nn.Module:
    """Rebuild a pruned model from the unpruned architecture and a checkpoint.

    ``model_or_builder``: the unpruned model (not modified) or a function that builds one.
    ``path_or_state_dict``: a file or a dict; wrappers ``{"state_dict": ...}`` / ``{"model": ...}`` and
    DDP's ``module.`` key prefix are accepted, as ``get_model`` accepts them.
    A checkpoint with a plan is replayed exactly; a bare state dict needs ``example_inputs``
    (shape like (3, 32, 32)) and is rebuilt from its tensor shapes.
    """
    data = _read(path_or_state_dict)
    model = model_or_builder if isinstance(model_or_builder, nn.Module) else model_or_builder()
    state = data["state_dict"]
    if "plan" in data:
        plan = PruningPlan.from_json(data["plan"])
        pruned = prune(model, plan=plan, remove_branches=bool(data.get("branches_removed", True)), verify=False)
    else:
        if example_inputs is None:
            raise SlimbenchValueError("this checkpoint has no plan: pass example_inputs (e.g. (3, 32, 32)) so the "
                             "architecture can be traced and rebuilt from the tensor shapes")
        plan = _plan_from_shapes(model, state, as_example_inputs(example_inputs))
        pruned = prune(model, plan=plan, verify=False)  # the weights come from the checkpoint next
    _check_state(pruned, state)
    pruned.load_state_dict(state, strict=True)
    return pruned
