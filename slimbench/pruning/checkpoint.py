"""Saving and loading pruned models without pickled code.

A checkpoint is a plain dict of tensors and strings, loaded with ``weights_only=True``:
``{"format", "state_dict", "plan" (JSON, optional), "input_shapes"}``. A pruned model is rebuilt
from the *unpruned* architecture: with the plan when the checkpoint has one (exact), otherwise
from the shapes in the state dict (netslim's way).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, fx, nn

from slimbench.analysis.graph import build_graph
from slimbench.core.atomic import atomic_path
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
    """Write ``model``'s state dict (and the plan that made it, if given) atomically."""
    inner = unwrap(model)
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
            raise ValueError(f"checkpoint {path}: refusing to load, it contains pickled objects other than tensors; "
                             "code in a checkpoint is never run (re-save it with torch.save(model.state_dict()))"
                             ) from err
        raise ValueError(f"checkpoint {path}: not a readable torch file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err
    if not isinstance(data, Mapping):
        raise ValueError(f"checkpoint {path}: holds a {type(data).__name__}, expected a dict (a state dict "
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
        raise ValueError("checkpoint is neither a slimbench checkpoint nor a state dict of tensors (also looked "
                         "in its 'state_dict' and 'model' entries)")
    out = {k: v for k, v in data.items() if k not in ("state_dict", "model")} if state is not data else {}
    return {**out, "state_dict": _strip_module_prefix(state)}


def _plan_from_shapes(model: nn.Module, state: Mapping[str, Tensor], inputs) -> PruningPlan:
    """Keep-masks with the channel counts the state dict shows (first channels kept)."""
    residual = "select" if any(k.endswith(".index") for k in state) else "keep"
    graph = build_graph(model, inputs, residual=residual)
    masks = {}
    for name, rec in graph.bns.items():
        key = f"{name}.weight" if f"{name}.weight" in state else f"{name}.running_mean"
        if key not in state:
            raise ValueError(f"state dict has no entry for BatchNorm {name!r} ({name}.weight); "
                             "was it saved from this architecture?")
        if f"{name}.index" in state:
            mask = np.zeros(len(rec.in_gids), dtype=bool)
            mask[state[f"{name}.index"].numpy()] = True
        else:
            count = state[key].shape[0]
            if count > len(rec.gids):
                raise ValueError(f"{key} has {count} channels; the unpruned model has only {len(rec.gids)}")
            mask = np.arange(len(rec.gids)) < count
        if not mask.all() or rec.selector:
            masks[name] = torch.from_numpy(mask)
    plan = PruningPlan(masks=masks, method="from_shapes", ratio=None,
                       input_shapes=[list(t.shape) for t in inputs], options={"residual": residual})
    return plan


def _check_state(pruned: nn.Module, state: Mapping[str, Tensor]) -> None:
    expected = pruned.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"checkpoint is missing {key!r} (expected shape {tuple(value.shape)}); "
                             "truncated, or saved from another model?")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(f"checkpoint entry {key!r} has shape {tuple(state[key].shape)}, the pruned "
                             f"architecture expects {tuple(value.shape)}")
    extra = [k for k in state if k not in expected]
    if extra:
        raise ValueError(f"checkpoint has an entry the pruned model lacks: {extra[0]!r}")


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
        pruned = prune(model, plan=plan, remove_branches=bool(data.get("branches_removed", True)))
    else:
        if example_inputs is None:
            raise ValueError("this checkpoint has no plan: pass example_inputs (e.g. (3, 32, 32)) so the "
                             "architecture can be traced and rebuilt from the tensor shapes")
        plan = _plan_from_shapes(model, state, as_example_inputs(example_inputs))
        pruned = prune(model, plan=plan)
    _check_state(pruned, state)
    pruned.load_state_dict(state, strict=True)
    return pruned
