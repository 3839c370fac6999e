"""Tracing a model into a torch.fx graph whose every node names its module.

torch.fx symbolic tracing first; where the code branches on tensor shapes, fx tracing with meta
tensors (the shapes are then known). A submodule whose forward fx cannot trace (numpy on a
parameter, data-dependent control flow) becomes an opaque leaf in the same pass, at any depth and
as many times as needed: its channels are then frozen, the rest of the model stays prunable, and
a warning names it. Modules built inside a forward (``nn.AvgPool2d(2)(x)``) are traced through.
Only when the root module's own forward cannot be traced do we give up, with an error that names
the first real cause and the submodule it came from.

The caller's model is never changed: tracing runs on a copy of the module tree that shares the
weights (so fx's tensor constants, inserted modules and a forward's own caches land on the copy)
and every module's train/eval mode is restored.
"""

from __future__ import annotations

import copy
import inspect
import operator
import warnings
from collections.abc import Iterable

import torch
from torch import Tensor, fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer, proxys_to_metas

from slimbench.core.errors import SlimbenchRuntimeError
from slimbench.core.inputs import unwrap
from slimbench.core.rules import always_leaf, meta_call

__all__ = ["trace", "TraceFailure"]



class TraceFailure(SlimbenchRuntimeError):
    """torch.fx could not trace the model's own forward."""


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


class _LeafRules:
    """Leaf choice, modules built on the fly, and (when ``guard``) failing submodules as leaves."""

    def _setup(self, extra_leaves: Iterable[str], guard: bool) -> None:
        self.extra_leaves = set(extra_leaves)
        self.guard = guard
        self.fallbacks: dict[str, BaseException] = {}  # submodule -> why it became a leaf
        self.causes: list[tuple[str, BaseException]] = []  # every failure, innermost first
        self.stack: list[str] = []
        self._raw_calls = 0  # > 0 while a leaf runs on meta tensors: no tracing inside

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        # modules with an always-leaf channel rule (conv, linear, BN, ...), whatever the subclass
        if always_leaf(m) or qualified_name in self.extra_leaves or qualified_name in self.fallbacks:
            return True
        return super().is_leaf_module(m, qualified_name)

    def _registered_path(self, m: nn.Module) -> str | None:
        try:
            return fx.Tracer.path_of_module(self, m)  # not MetaTracer's, which inserts modules
        except NameError:
            return None

    def call_module(self, m, forward, args, kwargs):
        if self._raw_calls:
            return forward(*args, **kwargs)
        name = self._registered_path(m)
        if name is None:  # built inside a forward: trace through it, never register it anywhere
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                where = self.stack[-1] if self.stack else "the model"
                raise TraceFailure(
                    f"{where!s} builds a {type(m).__name__} with parameters inside its forward; its weights "
                    "are new on every call and cannot be pruned. Create it in __init__ instead.")
            return forward(*args, **kwargs)
        self.stack.append(name)
        try:
            return super().call_module(m, self._guarded(name, forward) if self.guard and name else forward,
                                       args, kwargs)
        finally:
            self.stack.pop()

    def _guarded(self, name: str, forward):
        def run(*args, **kwargs):
            graph = self.graph
            mark = list(graph.nodes)[-1] if len(graph.nodes) else None
            saved = (type(self.module_stack)(self.module_stack), dict(self.num_calls), list(self.stack))
            try:
                return forward(*args, **kwargs)
            except Exception as err:  # fx raises many types: TraceError, TypeError, AssertionError...
                self.causes.append((name, err))
                created = []
                for node in reversed(list(graph.nodes)):
                    if node is mark:
                        break
                    created.append(node)
                for node in created:  # newest first, so users go before what they use
                    if not node.users:
                        graph.erase_node(node)
                self.module_stack.clear()
                self.module_stack.update(saved[0])
                self.num_calls.clear()
                self.num_calls.update(saved[1])
                self.stack[:] = saved[2]
                self.fallbacks[name] = err
                return self.create_proxy("call_module", name, args, kwargs)
        return run


class _Tracer(_LeafRules, fx.Tracer):
    def __init__(self, extra_leaves: Iterable[str], guard: bool = False) -> None:
        super().__init__()
        self._setup(extra_leaves, guard)

    def run(self, model: nn.Module, inputs) -> fx.Graph:
        return self.trace(model)


class _ShapeTracer(_LeafRules, MetaTracer):
    """fx tracing that also carries meta tensors, so code that branches on shapes traces."""

    def __init__(self, extra_leaves: Iterable[str], guard: bool = False) -> None:
        super().__init__()
        self._setup(extra_leaves, guard)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if kind != "call_module":
            return super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        proxy = fx.Tracer.create_proxy(self, kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        self._disable_module_getattr = True
        self._raw_calls += 1
        try:
            metas = fx.node.map_aggregate(args, proxys_to_metas)
            kw_metas = fx.node.map_aggregate(kwargs, proxys_to_metas)
            proxy.install_tensor_meta(meta_call(self.root.get_submodule(target), metas, kw_metas))
        except Exception:  # no meta for this output; shape-dependent code after it fails (and is reported)
            pass
        finally:
            self._disable_module_getattr = False
            self._raw_calls -= 1
        return proxy

    def run(self, model: nn.Module, inputs) -> fx.Graph:
        names = list(inspect.signature(model.forward).parameters)[: len(inputs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MetaTracer warns for every output it cannot size
            return self.trace(model, meta_args={n: t.to("meta") for n, t in zip(names, inputs, strict=True)})


def _detached_root(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module tree sharing its parameters and buffers: what fx adds to the root,
    and what a forward stores in its modules while traced (timm's attention-bias caches keep a tensor,
    then a Proxy, in a dict), lands on the copy, never on the caller's model."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    try:
        return copy.deepcopy(model, memo=shared)
    except Exception:  # a module that cannot be deep-copied: a shallow copy with its own attribute tables
        pass
    try:
        root = copy.copy(model)
    except Exception:  # a class that cannot be copied: trace the model itself (fx may then add constants)
        return model
    root._modules = dict(model._modules)
    root._parameters = dict(model._parameters)
    root._buffers = dict(model._buffers)
    return root


def _attempt(tracer_cls, model: nn.Module, leaves: list[str], inputs, guard: bool):
    tracer = tracer_cls(leaves, guard)
    root = _detached_root(model)
    modes = {m: m.training for m in model.modules()}
    try:
        root.eval()  # trace the inference graph; the modes are restored right after
        return root, tracer.run(root, inputs), tracer, None
    except Exception as err:
        return root, None, tracer, err
    finally:
        for m, training in modes.items():
            m.training = training


def _batch_size_of(node, tensor: fx.Node) -> bool:
    """``node`` is ``tensor.size(0)``, ``tensor.shape[0]`` or ``tensor.size()[0]``."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_method" and node.target == "size":
        return node.args[0] is tensor and (node.args[1:] == (0,) or node.kwargs == {"dim": 0})
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
        src = node.args[0]
        return isinstance(src, fx.Node) and src.args[0] is tensor and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1))
    return False


def _canonical_flattens(graph: fx.Graph) -> None:
    """``x.view(x.size(0), -1)`` (or reshape, or ``x.shape[0]``) becomes ``torch.flatten(x, 1)``.

    The same tensor, said the way the channel graph maps exactly (a classifier's in-features are
    the channels repeated over the spatial size), whichever way the model's author wrote it.
    """
    for node in list(graph.nodes):
        if node.op != "call_method" or node.target not in ("view", "reshape") or node.kwargs:
            continue
        args = node.args[1:]
        if len(args) == 1 and isinstance(args[0], (tuple, list)):
            args = tuple(args[0])
        if len(args) != 2 or args[1] != -1 or not _batch_size_of(args[0], node.args[0]):
            continue
        with graph.inserting_before(node):
            flat = graph.call_function(torch.flatten, (node.args[0], 1))
        flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        graph.erase_node(node)
        size = args[0]
        while isinstance(size, fx.Node) and not size.users and size.op != "placeholder":
            parent = size.args[0] if size.op == "call_function" and size.target is operator.getitem else None
            graph.erase_node(size)
            size = parent


def _failure(model: nn.Module, tracer, err: BaseException) -> TraceFailure:
    cause_name, cause = tracer.causes[0] if tracer.causes else ("", err)
    where = f"submodule {cause_name!r} ({type(model.get_submodule(cause_name)).__name__})" if cause_name else \
        f"the forward of {type(model).__name__} itself"
    return TraceFailure(
        f"torch.fx cannot trace {where}: {_describe(cause)}"
        + (f"; the forward of {type(model).__name__} then failed with {_describe(err)}"
           if cause is not err else "")
        + ". Make its control flow independent of tensor values, or move the data-dependent part into "
        "a submodule (slimbench treats it as an opaque leaf and freezes its channels)."
    )


def trace(model: nn.Module, leaf_modules: Iterable[str] = (),
          inputs: tuple[Tensor, ...] | None = None) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model`` (unwrapped from DataParallel/DDP/torch.compile) with torch.fx.

    Plain symbolic tracing first; then, given ``inputs``, tracing with meta shapes (for code that
    branches on tensor shapes) where failing submodules become opaque leaves; then plain tracing
    with those leaves, which keeps the forward's own control flow when that suffices.
    Returns the GraphModule (sharing the model's submodules, so nothing is copied) and the names
    of submodules that had to be treated as opaque leaves.
    """
    model = unwrap(model)
    leaves = list(leaf_modules)
    root, graph, tracer, err = _attempt(_Tracer, model, leaves, inputs, guard=False)
    shaped = False
    if graph is None:
        first = tracer
        guarded = _attempt(_ShapeTracer if inputs is not None else _Tracer, model, leaves, inputs, guard=True)
        if guarded[1] is None:
            raise _failure(model, guarded[2] if guarded[2].causes else first, guarded[3]) from guarded[3]
        root, graph, tracer, _ = guarded
        shaped = inputs is not None
        if shaped and tracer.fallbacks:  # plain fx with those leaves keeps the forward's own control flow
            plain = _attempt(_Tracer, model, leaves + list(tracer.fallbacks), inputs, guard=False)
            if plain[1] is not None:
                root, graph, _, _ = plain
                shaped = False
    _canonical_flattens(graph)
    fallbacks = list(tracer.fallbacks)
    if fallbacks:
        warnings.warn(
            "torch.fx could not trace "
            + ", ".join(f"{n!r} ({type(model.get_submodule(n)).__name__}) [{_describe(e)[:120]}]"
                        for n, e in tracer.fallbacks.items())
            + "; they are treated as opaque leaves and their channels are not pruned. Pass "
            "leaf_modules=[...] to silence this, or make their forward traceable.",
            stacklevel=3,
        )
    gm = fx.GraphModule(root, graph, class_name=type(model).__name__)
    gm.meta["slimbench_shape_specialised"] = shaped
    return gm, fallbacks
