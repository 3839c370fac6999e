"""Applying a plan: a new, physically smaller model; or the zeroed-weights form of the same cut.

Contract (tested on every supported model): in eval mode, ``prune(model, x, plan=p)`` gives the
outputs of ``zero_bn_channels(model, p)``, the caller's model with gamma = beta = 0 on every
pruned channel; ``zero(model, p)`` gives them too, with every removed weight set to 0.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from torch import Tensor, fx, nn

from slimbench.analysis.graph import ChannelGraph, ConvRecord, build_graph
from slimbench.core.inputs import ExampleInputs, as_example_inputs, unwrap
from slimbench.core.modules import MaskedBatchNorm
from slimbench.pruning.plan import PruningPlan, keep_from_plan, make_plan

__all__ = ["prune", "zero", "zero_bn_channels", "plan"]


def plan(model: nn.Module, example_inputs: ExampleInputs, *, method: str = "network_slimming",
         ratio: float = 0.5, **options) -> PruningPlan:
    """Decide which BN channels to remove; the model is not modified.

    ``method``: ``network_slimming`` (one global threshold on |gamma|), ``optimal_thresholding``
    (per layer; ``delta`` or a ``ratio`` it searches delta for) or ``uniform`` (same fraction per
    layer). ``ratio``: fraction of prunable channels to remove, or ``target_macs``: fraction of the
    unpruned conv+linear MACs to keep. ``round_to``: channel counts in multiples of N.
    ``residual``: ``keep`` coupled groups whole, prune them with a ``shared`` importance, or
    ``select`` channels for BNs that read a residual sum or a concat (MaskedBatchNorm).
    ``branches="remove"``: drop residual branches whose last BN falls under the threshold.
    """
    return make_plan(model, example_inputs, method=method, ratio=ratio, **options)


def _graph_for(model: nn.Module, p: PruningPlan) -> ChannelGraph:
    if p._graph is not None and p._model_id == id(unwrap(model)):
        return p._graph
    shapes = [tuple(s) for s in p.input_shapes]
    inputs = tuple(torch.zeros(s) for s in shapes)
    return build_graph(model, inputs, residual=p.options.get("residual", "keep"))


def _param(value: Tensor, like: nn.Parameter | None) -> nn.Parameter | None:
    if like is None:
        return None
    return nn.Parameter(value.detach().clone(), requires_grad=like.requires_grad)


def _index(mask: np.ndarray, device) -> Tensor:
    return torch.as_tensor(np.flatnonzero(mask), dtype=torch.long, device=device)


def _slice_conv(module: nn.Module, rec: ConvRecord, keep: np.ndarray) -> None:
    weight = module.weight
    device = weight.device
    if rec.role == "dense":
        out_idx, in_idx = _index(keep[rec.out_gids], device), _index(keep[rec.in_gids], device)
        new_weight = weight.index_select(0, out_idx).index_select(1, in_idx)
        bias = module.bias.index_select(0, out_idx) if module.bias is not None else None
        if isinstance(module, nn.Linear):
            module.in_features, module.out_features = len(in_idx), len(out_idx)
        else:
            module.in_channels, module.out_channels = len(in_idx), len(out_idx)
    elif rec.role == "joined":
        kept = keep[rec.out_gids]
        out_idx = _index(kept, device)
        if rec.group_size == 1:
            new_weight, groups = weight.index_select(0, out_idx), len(out_idx)
        else:
            blocks = kept.reshape(rec.groups, rec.group_size)
            counts = blocks.sum(1)
            if (counts != counts[0]).any():
                raise ValueError(f"grouped conv {rec.name!r} would keep unequal channel counts per group")
            rows, per = weight.index_select(0, out_idx), int(counts[0])
            pieces = [rows[g * per:(g + 1) * per].index_select(1, _index(blocks[g], device))
                      for g in range(rec.groups)]
            new_weight, groups = torch.cat(pieces), rec.groups
        bias = module.bias.index_select(0, out_idx) if module.bias is not None else None
        module.in_channels = module.out_channels = len(out_idx)
        module.groups = groups
    else:
        return
    module.weight = _param(new_weight, weight)
    if module.bias is not None:
        module.bias = _param(bias, module.bias)


def _slice_bn(bn: nn.Module, keep: np.ndarray) -> None:
    idx = _index(keep, bn.running_mean.device if bn.running_mean is not None else "cpu")
    if bn.affine:
        bn.weight = _param(bn.weight.index_select(0, idx), bn.weight)
        bn.bias = _param(bn.bias.index_select(0, idx), bn.bias)
    if bn.track_running_stats:
        bn.running_mean = bn.running_mean.index_select(0, idx)
        bn.running_var = bn.running_var.index_select(0, idx)
    bn.num_features = len(idx)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _as_graph_module(model: nn.Module, graph: ChannelGraph, branches: list[str]) -> fx.GraphModule:
    """The traced graph (a copy) over the pruned modules, with ``branches`` cut out.

    Used when branches are removed, and when tracing had to specialise on tensor shapes (the
    model's own forward could take another path once its channel counts change).
    """
    g = copy.deepcopy(graph.gm.graph)
    nodes = {n.name: n for n in g.nodes}
    chosen = [b for b in graph.branches if b.bn in branches]
    for branch in chosen:
        add = nodes[branch.add_node]
        add.replace_all_uses_with(add.args[1 - branch.operand])
    dead = set().union(*(b.nodes for b in chosen), {b.add_node for b in chosen})
    for node in reversed(list(g.nodes)):
        if node.name in dead:
            g.erase_node(node)
    if chosen:  # the surviving operand may be read elsewhere: no in-place ops on it
        for node in g.nodes:
            if node.kwargs.get("inplace"):
                node.kwargs = {**node.kwargs, "inplace": False}
        for module in model.modules():
            if getattr(module, "inplace", False) is True:
                module.inplace = False
    g.lint()
    for node in g.nodes:  # constants fx made while tracing live on the traced copy, not on the model
        if node.op == "get_attr" and "." not in node.target and not hasattr(model, node.target):
            setattr(model, node.target, copy.deepcopy(getattr(graph.gm, node.target)))
    return fx.GraphModule(model, g, class_name=type(model).__name__)


def prune(model: nn.Module, example_inputs: ExampleInputs | None = None, *, plan: PruningPlan | None = None,
          remove_branches: bool = True, fold_beta: bool = False, verify: bool = True,
          **plan_options) -> nn.Module:
    """A new, physically smaller model (the caller's model is not touched).

    Without ``plan``, one is made with ``slimbench.plan(model, example_inputs, **plan_options)``.
    The result is an instance of the model's own class, or a ``torch.fx.GraphModule`` with the
    same qualified names when residual branches were removed (``remove_branches=False`` keeps
    them, with zero weights, as netslim did) or when the forward branches on tensor shapes.
    ``fold_beta=True`` adds the constant that pruned channels emit in the trained model to the
    next layers' biases (see ``slimbench.folding``); the result then tracks the unpruned model
    instead of the zeroed one.
    ``verify=True`` (the default) runs the result and the zeroed model on the example inputs and
    keeps whole the channel groups whose removal changes the outputs (``slimbench.pruning.verify``);
    ``result.slimbench_plan`` is the plan the result was built from, with that record.
    """
    if plan is None:
        if example_inputs is None:
            raise ValueError("prune needs example_inputs (a tensor or a shape like (3, 32, 32)) or a plan")
        plan = make_plan(model, example_inputs, **plan_options)
    elif plan_options:
        raise ValueError(f"options {sorted(plan_options)} are ignored when a plan is given; pass one or the other")
    graph = _graph_for(model, plan)
    keep, removed = keep_from_plan(graph, plan)
    source = unwrap(model)
    pruned = copy.deepcopy(source)
    if removed and not remove_branches:
        owned = np.isin(np.array([owner for _, owner, _ in graph.spaces]), list(removed))
        keep = keep | owned[graph.space_of]
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, rec in graph.convs.items():
            if name not in removed or not remove_branches:
                _slice_conv(modules[name], rec, keep)
        for name, rec in graph.bns.items():
            if name in removed and remove_branches:
                continue
            bn = modules[name]
            if rec.selector and name not in removed:
                in_keep = keep[rec.in_gids]
                out_keep = keep[rec.gids]
                if not np.array_equal(in_keep, out_keep):
                    _set_module(pruned, name, MaskedBatchNorm.from_batchnorm(
                        bn, torch.from_numpy(out_keep), torch.from_numpy(in_keep)))
                    continue
            _slice_bn(bn, keep[rec.gids])
        if removed and not remove_branches:
            for name in removed:
                for param in modules[name].parameters(recurse=False):
                    param.zero_()
    if fold_beta:
        from slimbench.pruning.folding import fold_beta as fold

        inputs = (as_example_inputs(example_inputs) if example_inputs is not None
                  else tuple(torch.zeros(s) for s in plan.input_shapes))
        fold(source, pruned, graph, keep, plan, inputs, removed if remove_branches else frozenset())
    if removed and remove_branches:
        result = _as_graph_module(pruned, graph, plan.branches)
    elif graph.shape_specialised:
        result = _as_graph_module(pruned, graph, [])
    else:
        result = pruned
    from slimbench.pruning.verify import attach_plan, verify_pruned

    def build(p: PruningPlan, fold: bool) -> nn.Module:
        return prune(model, example_inputs, plan=p, remove_branches=remove_branches, fold_beta=fold, verify=False)

    if verify:
        if plan._graph is not graph:  # a copy that carries the graph, so the retries need no tracing
            plan = dataclasses.replace(plan)
            plan._graph, plan._model_id = graph, id(source)
        result = verify_pruned(plan, result, graph, _check_inputs(example_inputs, plan, source), build,
                               lambda p: zero_bn_channels(model, p), checkable=not fold_beta, fold_beta=fold_beta)
    else:
        attach_plan(result, plan)
    earlier = getattr(source, "slimbench_plan", None)  # a pruned model pruned again: one plan against the original
    if isinstance(earlier, PruningPlan):
        from slimbench.pruning.passes import compose

        result.slimbench_plan = compose(earlier, result.slimbench_plan)
    return result


def _check_inputs(example_inputs: ExampleInputs | None, p: PruningPlan, source: nn.Module) -> tuple[Tensor, ...]:
    """The inputs the self-check runs: the caller's, else seeded random ones of the plan's shapes."""
    like = next((t for t in [*source.parameters(), *source.buffers()] if t.is_floating_point()), None)
    if example_inputs is not None:
        return as_example_inputs(example_inputs, like=like)
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(tuple(s), generator=gen).to(device=like.device if like is not None else "cpu",
                                                         dtype=like.dtype if like is not None else None)
                 for s in p.input_shapes)


def zero(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A copy of ``model`` with every weight the surgery would remove set to 0 (shapes unchanged)."""
    graph = _graph_for(model, plan)
    keep, removed = keep_from_plan(graph, plan)
    zeroed = copy.deepcopy(unwrap(model))
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for name, rec in graph.convs.items():
            module = modules[name]
            if name in removed:
                for param in module.parameters(recurse=False):
                    param.zero_()
                continue
            if rec.role == "fixed":
                continue
            out_drop = _index(~keep[rec.out_gids], module.weight.device)
            module.weight.index_fill_(0, out_drop, 0)
            if module.bias is not None:
                module.bias.index_fill_(0, out_drop, 0)
            if rec.role == "dense":
                module.weight.index_fill_(1, _index(~keep[rec.in_gids], module.weight.device), 0)
            elif rec.group_size > 1:  # grouped: drop pruned inputs inside each group too
                blocks = keep[rec.out_gids].reshape(rec.groups, rec.group_size)
                for g, block in enumerate(blocks):
                    rows = module.weight[g * rec.group_size:(g + 1) * rec.group_size]
                    rows.index_fill_(1, _index(~block, module.weight.device), 0)
        for name, rec in graph.bns.items():
            bn = modules[name]
            drop = np.ones(len(rec.gids), bool) if name in removed else ~keep[rec.gids]
            if bn.affine:
                idx = _index(drop, bn.weight.device)
                bn.weight.index_fill_(0, idx, 0)
                bn.bias.index_fill_(0, idx, 0)
    return zeroed


def zero_bn_channels(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The reference of the equivalence contract: a copy with gamma = beta = 0 where masks are False."""
    zeroed = copy.deepcopy(unwrap(model))
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for name, mask in plan.masks.items():
            bn = modules.get(name)
            if bn is None or getattr(bn, "weight", None) is None or bn.weight.shape != (len(mask),):
                from slimbench.core.errors import SlimbenchValueError

                found = "no such module" if bn is None else f"a {type(bn).__name__} of shape " + (
                    f"{tuple(bn.weight.shape)}" if getattr(bn, "weight", None) is not None else "(no affine weight)")
                raise SlimbenchValueError(
                    f"zero_bn_channels: the plan masks {len(mask)} channels of BatchNorm {name!r}, but the model "
                    f"has {found} there (was the plan made for another model, or for the pruned one?)")
            drop = torch.as_tensor(~np.asarray(mask, dtype=bool)).to(bn.weight.device)
            bn.weight[drop] = 0
            bn.bias[drop] = 0
    return zeroed
