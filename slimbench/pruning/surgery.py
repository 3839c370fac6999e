"""Applying a plan: a new, physically smaller model; or the zeroed-weights form of the same cut.

Contract (tested on every supported model): in eval mode, ``prune(model, x, plan=p)`` gives the
outputs of ``zero_bn_channels(model, p)``, the caller's model with gamma = beta = 0 on every
pruned channel; ``zero(model, p)`` gives them too, with every removed weight set to 0.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, fx, nn

from slimbench.analysis.graph import DEFAULT_RESIDUAL, ChannelGraph, build_graph
from slimbench.analysis.params import slice_params
from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import ExampleInputs, as_example_inputs, unwrap
from slimbench.core.modules import MaskedBatchNorm
from slimbench.core.rules import BNRecord, ChannelRule, ConvRecord, rule_for
from slimbench.pruning.options import wants_latency_model
from slimbench.pruning.plan import PruningPlan, keep_from_plan, make_plan

__all__ = ["prune", "zero", "zero_bn_channels", "plan"]


def plan(model: nn.Module, example_inputs: ExampleInputs, *, method: str = "network_slimming",
         ratio: float | None = None, **options) -> PruningPlan:
    """Decide which BN channels to remove; the model is not modified. Returns pure data.

    ``method``: a registered criterion (``slimbench.pruning.criteria``): ``network_slimming`` (one
    global threshold), ``optimal_thresholding`` (per layer; its option ``delta``, or a ``ratio`` it
    searches delta for) or ``uniform`` (same fraction per layer); options a criterion does not take
    are refused. ``ratio``: fraction of prunable channels to remove (default 0.5), or ``target_macs``:
    fraction of the unpruned conv+linear MACs to keep (not both). ``importance``: ``"gamma"``
    (mean |gamma|, default), ``"bn_scale"`` or a function ``fn(name, bn) -> scores``
    (``slimbench.pruning.importance``). ``round_to``: channel counts in multiples of N (layers of N
    channels or fewer stay whole). ``residual``: ``keep`` coupled groups whole, prune them with a
    ``shared`` importance, or ``select`` channels for BNs that read a residual sum or a concat
    (MaskedBatchNorm). ``branches="remove"``: drop residual branches whose last BN falls under the
    threshold. ``ignored_layers``: names (or modules) of BNs, convs or blocks whose channels stay.
    ``layer_ratios``: ``{bn_name: ratio}``, that BN's layer pruned by its own ratio.
    A plan that removes < 5 % of the MACs when ratio >= 0.1 was asked warns with the reason and the
    option that would remove more. ``slimbench.analyze`` traces once for many plans.
    ``target_latency``: fraction of the measured latency to keep; ``widths="latency"``: widths at the ends
    of measured latency steps, for importance per millisecond; ``widths="steps"``: the criterion's widths
    moved to the nearest step end (a per-layer ``round_to``); ``latency``: a ``LatencyModel`` or
    ``{"backend", "threads", "batch", "cache_dir", "progress", "timing"}`` to build one
    (``slimbench.pruning.latency_model``).
    """
    if wants_latency_model(options):
        from slimbench.pruning.latency_model import resolve_latency

        inputs = as_example_inputs(example_inputs)
        resolve_latency(model, inputs, options, lambda p: prune(model, inputs, plan=p))
        example_inputs = inputs
    return make_plan(model, example_inputs, method=method, ratio=ratio, **options)


def _graph_for(model: nn.Module, p: PruningPlan, graph: ChannelGraph | None = None) -> ChannelGraph:
    residual = p.options.get("residual", DEFAULT_RESIDUAL)
    if graph is not None:
        if graph.options.get("residual", DEFAULT_RESIDUAL) != residual:
            raise SlimbenchValueError(
                f"the plan was made with residual={residual!r}, the channel graph given was traced "
                             f"with residual={graph.options.get('residual')!r}")
        return graph
    like = next((t for t in unwrap(model).parameters() if t.is_floating_point()), None)
    kind = {} if like is None else {"dtype": like.dtype, "device": like.device}
    inputs = tuple(torch.zeros(tuple(s), **kind) for s in p.input_shapes)
    return build_graph(model, inputs, residual=residual)


def _rule(module: nn.Module, name: str) -> ChannelRule:
    rule = rule_for(module)
    if rule is None:  # the plan-time graph recorded it, so a rule labelled it: the model changed since
        raise SlimbenchValueError(f"module {name!r} ({type(module).__name__}) has no channel rule; register one with "
                         "slimbench.core.rules.register_module_rule")
    return rule


def _slice(module: nn.Module, name: str, rec: ConvRecord | BNRecord, keep: np.ndarray) -> None:
    """Remove ``module``'s pruned channels in place, as its channel rule says."""
    _rule(module, name).slice(module, rec, keep)


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


def _branch_interior(graph: ChannelGraph, removed: frozenset[str]) -> np.ndarray:
    """Channels that only the removed branches' modules carry: kept (zeroed) when the branches stay.

    A branch's last conv writes into the residual sum, whose channels the trunk's BNs decide
    (with residual='shared' they may be pruned); only the channels inside the branch are kept whole.
    """
    owned = np.isin(np.array([owner for _, owner, _ in graph.spaces]), list(removed))[graph.space_of]
    outside = np.zeros(graph.n_classes, dtype=bool)
    for name, rec in graph.bns.items():
        if name not in removed:
            outside[graph.class_of[rec.gids]] = True
    return owned & ~outside[graph.class_of]


def prune(model: nn.Module, example_inputs: ExampleInputs | None = None, *, plan: PruningPlan | None = None,
          remove_branches: bool = True, fold_beta: bool = False, verify: bool = True,
          graph: ChannelGraph | None = None,
          **plan_options) -> nn.Module:
    """A new, physically smaller model (the caller's model is not touched).

    Without ``plan``, one is made with ``slimbench.plan(model, example_inputs, **plan_options)``.
    The result is an instance of the model's own class, or a ``torch.fx.GraphModule`` with the
    same qualified names when residual branches were removed (``remove_branches=False`` keeps
    them, with zero weights, as netslim did) or when the forward branches on tensor shapes.
    ``fold_beta=True`` adds the constant that pruned channels emit in the trained model to the
    next layers' biases (see ``slimbench.folding``); the result then tracks the unpruned model
    instead of the zeroed one. ``graph``: this model's channel graph (``slimbench.analyze`` passes it)
    so that pruning does not trace again.
    ``verify=True`` (the default) runs the result and the zeroed model on the example inputs and
    keeps whole the channel groups whose removal changes the outputs (``slimbench.pruning.verify``);
    ``result.slimbench_plan`` is the plan the result was built from, with that record.
    """
    made_here = plan is None
    if plan is None:
        if example_inputs is None:
            raise SlimbenchValueError("prune needs example_inputs (a tensor or a shape like (3, 32, 32)) or a plan")
        example_inputs = as_example_inputs(example_inputs)
        if graph is None:  # traced once, for the plan and the surgery
            graph = build_graph(model, example_inputs, residual=plan_options.get("residual", DEFAULT_RESIDUAL),
                                leaf_modules=plan_options.get("leaf_modules", ()))
        plan = make_plan(model, example_inputs, graph=graph, **plan_options)
    elif plan_options:
        raise SlimbenchValueError(
            f"options {sorted(plan_options)} are ignored when a plan is given; pass one or the other")
    graph = _graph_for(model, plan, graph)
    keep, removed = keep_from_plan(graph, plan)
    source = unwrap(model)
    pruned = copy.deepcopy(source)
    if removed and not remove_branches:
        keep = keep | _branch_interior(graph, removed)
    modules = dict(pruned.named_modules())
    with torch.no_grad():
        for name, rec in graph.convs.items():
            if name not in removed or not remove_branches:
                _slice(modules[name], name, rec, keep)
        for name, rec in graph.bns.items():
            if name in removed and remove_branches:
                continue
            bn = modules[name]
            if rec.selector and name not in removed and not isinstance(bn, MaskedBatchNorm):
                in_keep = keep[rec.in_gids]
                out_keep = keep[rec.gids]
                if not np.array_equal(in_keep, out_keep):
                    _set_module(pruned, name, MaskedBatchNorm.from_batchnorm(
                        bn, torch.from_numpy(out_keep), torch.from_numpy(in_keep)))
                    continue
            _slice(bn, name, rec, keep)
        if removed and not remove_branches:
            for name in removed:
                for param in modules[name].parameters(recurse=False):
                    param.zero_()
        slice_params(pruned, graph.params, keep)  # layer scales and other per-channel tensors the forward reads
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
    from slimbench.pruning.verify import attach_plan, replan_without_frozen, verify_pruned, zeroed_outputs

    def build(p: PruningPlan, fold: bool) -> nn.Module:
        return prune(model, example_inputs, plan=p, remove_branches=remove_branches, fold_beta=fold, verify=False,
                     graph=graph)  # the retries reuse the graph: no tracing

    if verify:
        inputs = _check_inputs(example_inputs, plan, source)

        def verified(p: PruningPlan, first: nn.Module | None = None) -> nn.Module:
            return verify_pruned(p, build(p, fold_beta) if first is None else first, graph, inputs, build,
                                 lambda q, x, dtype: zeroed_outputs(model, q, x, dtype), checkable=not fold_beta,
                                 fold_beta=fold_beta, warn=not made_here)

        result = verified(plan, result)
        if made_here:  # re-plan without the frozen groups, so that the others are pruned as much as asked
            result = replan_without_frozen(
                result, graph, plan_options, verified=verified,
                make=lambda options: make_plan(model, example_inputs, graph=graph, warn=False, **options))
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


def zero(model: nn.Module, plan: PruningPlan, *, graph: ChannelGraph | None = None) -> nn.Module:
    """A copy of ``model`` with every weight the surgery would remove set to 0 (shapes unchanged)."""
    graph = _graph_for(model, plan, graph)
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
            _rule(module, name).zero(module, rec, keep)
        for name, rec in graph.bns.items():
            bn = modules[name]
            _rule(bn, name).zero(bn, rec, np.zeros_like(keep) if name in removed else keep)
    return zeroed


def zero_bn_channels(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The reference of the equivalence contract: a copy with gamma = beta = 0 where masks are False."""
    modules = dict(unwrap(model).named_modules())
    for name in plan.masks:
        if not hasattr(modules.get(name), "weight") or getattr(modules[name], "bias", None) is None:
            raise SlimbenchValueError(f"the plan prunes BatchNorm {name!r}, which this model does not have (or it has "
                             "no affine gamma/beta); was the plan made for another model?")
    zeroed = copy.deepcopy(unwrap(model))
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for name, mask in plan.masks.items():
            bn = modules.get(name)
            if bn is None or getattr(bn, "weight", None) is None or bn.weight.shape != (len(mask),):
                found = "no such module" if bn is None else f"a {type(bn).__name__} of shape " + (
                    f"{tuple(bn.weight.shape)}" if getattr(bn, "weight", None) is not None else "(no affine weight)")
                raise SlimbenchValueError(
                    f"zero_bn_channels: the plan masks {len(mask)} channels of BatchNorm {name!r}, but the model "
                    f"has {found} there (was the plan made for another model, or for the pruned one?)")
            drop = torch.as_tensor(~np.asarray(mask, dtype=bool)).to(bn.weight.device)
            bn.weight[drop] = 0
            bn.bias[drop] = 0
    return zeroed
