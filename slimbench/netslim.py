"""Drop-in for netslim (github.com/yeyun11/netslim): its public names and signatures, slimbench underneath.

Change ``from netslim import ...`` to ``from slimbench.netslim import ...`` and a netslim script runs
unchanged: ``update_bn`` between ``loss.backward()`` and ``optimizer.step()``, ``prune(model,
input_shape)``, ``load_pruned_model(model, weights)``. What differs, on purpose:

- ``prune`` returns a new model and leaves the caller's as it was (netslim pruned it in place); the
  channel graph is slimbench's (torch.fx on torch 2.x), so residual and concat models are handled
  exactly (coupled channels are kept whole, or selected with ``channel_select=True``).
- ``prune_method`` takes the markers exported here (``network_slimming``, ``uniform_scaling``,
  ``optimal_thresholding``) or a slimbench method name; netslim's weight-dict functions are not called.
- ``load_pruned_model`` also reads slimbench checkpoints (with their plan) and the wrappers
  ``get_model`` accepts (``{"state_dict": ...}``, ``{"model": ...}``, DDP's ``module.`` prefix).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from slimbench.analysis.graph import build_graph
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.modules import MaskedBatchNorm
from slimbench.pruning import checkpoint as _checkpoint
from slimbench.pruning.surgery import prune as _prune

__all__ = ["update_bn", "update_bn_by_names", "prune", "network_slimming", "uniform_scaling",
           "optimal_thresholding", "load_pruned_model", "get_norm_layer_names", "get_pruning_layers",
           "MaskedBatchNorm"]

NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm)


# ---------------------------------------------------------------- sparsity

def _l1_step(module: nn.Module, s: float) -> None:
    weight = getattr(module, "weight", None)
    if weight is not None and weight.grad is not None:
        weight.grad.add_(torch.sign(weight.detach()), alpha=float(s))


def update_bn(model: nn.Module, s: float = 1e-4) -> None:
    """Add ``s * sign(gamma)`` to the gradient of every BatchNorm / InstanceNorm / GroupNorm scale."""
    for module in model.modules():
        if isinstance(module, NORM_TYPES):
            _l1_step(module, s)


def update_bn_by_names(model: nn.Module, sparsity_dict: Mapping[str, float]) -> None:
    """Add ``s * sign(gamma)`` to the named norm layers only, one ``s`` each: ``{name: s}``."""
    if not isinstance(sparsity_dict, Mapping):
        raise TypeError("update_bn_by_names(model, sparsity_dict): sparsity_dict maps norm layer names to their s, "
                        "e.g. {'features.1': 1e-4}")
    for name, s in sparsity_dict.items():
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise SlimbenchValueError(f"update_bn_by_names: {type(model).__name__} has no module {name!r}; "
                                      "get_norm_layer_names(model, input_shape) lists them") from err
        if not isinstance(module, NORM_TYPES):
            raise SlimbenchValueError(f"update_bn_by_names: {name!r} is a {type(module).__name__}, not a norm layer")
        _l1_step(module, s)


# ---------------------------------------------------------------- pruning methods and prune

def _marker(method: str, doc: str) -> Callable:
    def marker(*args, **kwargs):
        raise TypeError(f"slimbench.netslim.{method} selects a method; pass it as "
                        f"prune(model, input_shape, prune_method={method}) instead of calling it")

    marker.__name__ = marker.__qualname__ = method
    marker.__doc__ = doc
    marker.slimbench_method = "uniform" if method == "uniform_scaling" else method
    return marker


network_slimming = _marker("network_slimming", "One global threshold on |gamma| (Liu et al., ICCV 2017).")
uniform_scaling = _marker("uniform_scaling", "The same fraction of channels removed from every prunable layer.")
optimal_thresholding = _marker("optimal_thresholding", "A threshold per layer (Ye et al., 2020).")


def prune(model: nn.Module, input_shape, prune_method=network_slimming, prune_ratio: float = 0.3,
          channel_select: bool = True) -> nn.Module:
    """A pruned copy of ``model``: ``prune_ratio`` of the prunable channels removed by ``prune_method``.

    ``channel_select=True`` lets BNs that read a residual sum or concat keep a selection of channels
    (a MaskedBatchNorm), as netslim did; residual branches are zeroed, not removed, as netslim did.
    """
    method = getattr(prune_method, "slimbench_method", prune_method)
    if not isinstance(method, str):
        raise TypeError(f"prune_method must be network_slimming, uniform_scaling or optimal_thresholding from "
                        f"slimbench.netslim (or a slimbench method name), got {prune_method!r}")
    return _prune(model, tuple(input_shape), method=method, ratio=prune_ratio,
                  residual="select" if channel_select else "keep", remove_branches=False)


# ---------------------------------------------------------------- loading

def _shrink(module: nn.Module, name: str, shape: torch.Size) -> None:
    """Give ``module.<name>`` the pruned ``shape`` (its leading entries along each shrunk dim)."""
    old = getattr(module, name)
    new = old.detach()
    for dim, (before, after) in enumerate(zip(old.shape, shape, strict=True)):
        if after > before:
            raise SlimbenchValueError(f"{name} of {type(module).__name__} has {before} entries along dim {dim}; "
                                      f"the pruned weights have {after}: not from this architecture")
        new = new.narrow(dim, 0, after)
    new = new.clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)
    if name != "weight":
        return
    if isinstance(module, _BatchNorm | _InstanceNorm):
        module.num_features = shape[0]
    elif isinstance(module, nn.GroupNorm):
        module.num_channels = shape[0]
    elif isinstance(module, nn.modules.conv._ConvNd):
        depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
        module.out_channels = shape[0]
        module.in_channels = shape[0] if depthwise else shape[1] * module.groups
        if depthwise:
            module.groups = shape[0]
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = shape[0], shape[1]


def _rebuild_from_shapes(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    for key, index in state.items():  # channel selection: a BN that keeps the channels in <name>.index
        name = key[: -len(".index")]
        if key.endswith(".index") and isinstance(model.get_submodule(name) if name else model, _BatchNorm):
            bn = model.get_submodule(name)
            if not isinstance(bn, MaskedBatchNorm):
                parent, _, leaf = name.rpartition(".")
                masked = MaskedBatchNorm(index, bn.num_features, bn.eps, bn.momentum, bn.affine,
                                         bn.track_running_stats)
                setattr(model.get_submodule(parent) if parent else model, leaf, masked)
    current = model.state_dict()
    for key, value in state.items():
        if key in current and tuple(current[key].shape) != tuple(value.shape):
            owner, _, leaf = key.rpartition(".")
            _shrink(model.get_submodule(owner) if owner else model, leaf, value.shape)
    return model


def load_pruned_model(model: nn.Module, pruned_weights, prefix: str = "", load_pruned_weights: bool = True,
                      inplace: bool = True) -> nn.Module:
    """Give ``model`` (unpruned) the pruned structure that ``pruned_weights`` describe, and their values.

    ``pruned_weights``: a pruned model's state dict (a slimbench checkpoint file or dict works too);
    ``prefix``: a prefix its keys carry; ``load_pruned_weights=False``: structure only (the leading
    channels of the current weights); ``inplace=False``: work on a copy (netslim's default modifies
    ``model``, and so does this one).
    """
    if isinstance(pruned_weights, str | os.PathLike):
        pruned_weights = _checkpoint.read_checkpoint(pruned_weights)
    data = dict(pruned_weights)
    if str(data.get("format", "")).startswith("slimbench.pruned") and "plan" in data:
        pruned = _checkpoint.load_pruned_model(model, data)  # exact replay of the plan (a new model)
        if inplace and type(pruned) is type(model):
            model.__dict__.update(pruned.__dict__)
            return model
        return pruned
    state = _checkpoint._read(data)["state_dict"]
    if prefix:
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    target = model if inplace else copy.deepcopy(model)
    _rebuild_from_shapes(target, state)
    if load_pruned_weights:
        missing = sorted(set(target.state_dict()) - set(state))
        extra = sorted(set(state) - set(target.state_dict()))
        if missing or extra:
            raise SlimbenchValueError(f"load_pruned_model: the weights do not fit {type(model).__name__} "
                                      f"(missing {missing[:3]}, unexpected {extra[:3]}); saved from another model, "
                                      "or with a prefix (pass prefix=...)?")
        target.load_state_dict(state, strict=True)
    return target


# ---------------------------------------------------------------- graph queries

def get_pruning_layers(model: nn.Module, input_shape, device=None) -> tuple[dict, dict, list[str]]:
    """``(prec_layers, succ_layers, norm_names)``: for each BN, the conv / linear layers that produce
    its channels (prunable BNs) and that read them (prunable and channel-selectable BNs); all BNs."""
    example = torch.zeros(1, *tuple(input_shape), device=device)
    plain = build_graph(model, example, residual="keep")
    select = build_graph(model, example, residual="select")

    def layers(graph, keep_residual: bool) -> tuple[dict, dict]:
        allowed = graph.prunable_classes() & (~graph.class_residual if keep_residual else True)
        prec, succ = {}, {}
        for name, rec in graph.bns.items():
            if not allowed[graph.class_of[rec.gids]].any():
                continue
            spaces = set(graph.space_of[rec.gids].tolist())
            prec[name] = [c.name for c in graph.convs.values() if c.out_gids is not None
                          and spaces & set(graph.space_of[c.out_gids].tolist())]
            succ[name] = [c.name for c in graph.convs.values() if c.in_gids is not None and c.role == "dense"
                          and spaces & set(graph.space_of[c.in_gids].tolist())]
        return prec, succ

    prec_layers, succ_plain = layers(plain, True)
    _, succ_layers = layers(select, False)
    succ_layers.update(succ_plain)
    return prec_layers, succ_layers, list(plain.bns)


def get_norm_layer_names(model: nn.Module, input_shape) -> tuple[list[str], list[str], list[str]]:
    """``(prunable, maskable, all)`` BN names: prunable ones lose channels; maskable ones can only
    select channels (``channel_select=True``), because the tensor they read is shared."""
    prec, succ, names = get_pruning_layers(model, input_shape)
    prunable = [n for n in names if n in prec and n in succ]
    maskable = [n for n in names if n in succ and n not in prec]
    return prunable, maskable, names

