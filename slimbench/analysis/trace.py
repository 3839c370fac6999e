"""Tracing a model into a torch.fx graph whose every node names its module.

torch.fx symbolic tracing first; where the code branches on tensor shapes, fx tracing with meta
tensors (the shapes are then known). A submodule whose forward fx cannot trace (data-dependent
control flow, say) is retried as an opaque leaf: its channels are then frozen, the rest of the
model stays prunable, and a warning names it. Only when the root module's own forward cannot be
traced do we give up, with an error that says which module failed and what to do.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable

from torch import Tensor, fx, nn
from torch.fx.experimental.meta_tracer import MetaTracer, proxys_to_metas

from slimbench.core.inputs import unwrap
from slimbench.core.rules import always_leaf

__all__ = ["trace", "TraceFailure"]

_MAX_FALLBACKS = 16


class TraceFailure(RuntimeError):
    """torch.fx could not trace the model's own forward."""


class _LeafRules:
    """Leaf choice and a stack of the modules being traced (to name the one that fails)."""

    def _setup(self, extra_leaves: Iterable[str]) -> None:
        self.extra_leaves = set(extra_leaves)
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        # modules with an always-leaf channel rule (conv, linear, BN, ...), whatever the subclass
        if always_leaf(m) or qualified_name in self.extra_leaves:
            return True
        return super().is_leaf_module(m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.stack.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


class _Tracer(_LeafRules, fx.Tracer):
    def __init__(self, extra_leaves: Iterable[str]) -> None:
        super().__init__()
        self._setup(extra_leaves)

    def run(self, model: nn.Module, inputs) -> fx.Graph:
        return self.trace(model)


class _ShapeTracer(_LeafRules, MetaTracer):
    """fx tracing that also carries meta tensors, so code that branches on shapes traces."""

    def __init__(self, extra_leaves: Iterable[str]) -> None:
        super().__init__()
        self._setup(extra_leaves)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        if kind != "call_module":
            return super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        proxy = fx.Tracer.create_proxy(self, kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        from slimbench.analysis.replay import meta_call

        metas = fx.node.map_aggregate(args, proxys_to_metas)
        kw_metas = fx.node.map_aggregate(kwargs, proxys_to_metas)
        self._disable_module_getattr = True
        try:
            proxy.install_tensor_meta(meta_call(self.root.get_submodule(target), metas, kw_metas))
        except Exception:  # no meta for this output; shape-dependent code after it will fail loudly
            pass
        finally:
            self._disable_module_getattr = False
        return proxy

    def run(self, model: nn.Module, inputs) -> fx.Graph:
        names = list(inspect.signature(model.forward).parameters)[: len(inputs)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MetaTracer warns for every output it cannot size
            return self.trace(model, meta_args={n: t.to("meta") for n, t in zip(names, inputs, strict=True)})


def _attempt(tracer_cls, model: nn.Module, leaves: list[str], inputs):
    tracer = tracer_cls(leaves)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # trace the inference graph; the modes are restored right after
        return tracer.run(model, inputs), None, ""
    except Exception as err:  # fx raises many types: TraceError, TypeError, AssertionError...
        return None, err, next((n for n in reversed(tracer.stack) if n), "")
    finally:
        for m, training in modes.items():
            m.training = training


def trace(model: nn.Module, leaf_modules: Iterable[str] = (),
          inputs: tuple[Tensor, ...] | None = None) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model`` (unwrapped from DataParallel/DDP) with torch.fx.

    Plain symbolic tracing first; then, given ``inputs``, tracing with meta shapes (for code that
    branches on tensor shapes); then, if a submodule still fails, that submodule as an opaque leaf.
    Returns the GraphModule (sharing the model's submodules, so nothing is copied) and the names
    of submodules that had to be treated as opaque leaves.
    """
    model = unwrap(model)
    leaves = list(leaf_modules)
    fallbacks: list[str] = []
    tracers = [_Tracer] + ([_ShapeTracer] if inputs is not None else [])
    for _ in range(_MAX_FALLBACKS + 1):
        for tracer_cls in tracers:
            graph, err, failing = _attempt(tracer_cls, model, leaves, inputs)
            if graph is not None:
                break
        if graph is None:
            if not failing:
                raise TraceFailure(
                    f"torch.fx cannot trace the forward of {type(model).__name__} itself "
                    f"({type(err).__name__}: {err}). Make its control flow independent of tensor "
                    "values (or move the data-dependent part into a submodule, which slimbench then "
                    "treats as an opaque leaf)."
                ) from err
            if failing in leaves:
                raise TraceFailure(f"tracing failed even with {failing!r} as a leaf: {err}") from err
            leaves.append(failing)
            fallbacks.append(failing)
            continue
        if fallbacks:
            warnings.warn(
                "torch.fx could not trace "
                + ", ".join(f"{n!r} ({type(model.get_submodule(n)).__name__})" for n in fallbacks)
                + "; they are treated as opaque leaves and their channels are not pruned. Pass "
                "leaf_modules=[...] to silence this, or make their forward traceable.",
                stacklevel=3,
            )
        gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
        gm.meta["slimbench_shape_specialised"] = tracer_cls is _ShapeTracer
        return gm, fallbacks
    raise TraceFailure(f"gave up after treating {len(fallbacks)} submodules as leaves: {fallbacks}")
