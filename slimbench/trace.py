"""Tracing a model into a torch.fx graph whose every node names its module.

torch.fx symbolic tracing first. A submodule whose forward fx cannot trace (data-dependent
control flow, say) is retried as an opaque leaf: its channels are then frozen, the rest of the
model stays prunable, and a warning names it. Only when the root module's own forward cannot be
traced do we give up, with an error that says which module failed and what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .modules import ChannelSelection, MaskedBatchNorm
from .sparsity import unwrap

__all__ = ["ExampleInputs", "as_example_inputs", "trace", "TraceFailure"]

ExampleInputs = Tensor | Sequence[Tensor] | Sequence[int]

# Always leaves: their channel behaviour is read from their attributes, whatever the subclass.
_ALWAYS_LEAF = (_ConvNd, nn.Linear, _BatchNorm, MaskedBatchNorm, ChannelSelection)
_MAX_FALLBACKS = 16


class TraceFailure(RuntimeError):
    """torch.fx could not trace the model's own forward."""


def as_example_inputs(example_inputs: ExampleInputs) -> tuple[Tensor, ...]:
    """Normalise a tensor, a tuple of tensors or a shape tuple such as (3, 32, 32)."""
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list, torch.Size)) and example_inputs:
        if all(isinstance(d, int) and not isinstance(d, bool) for d in example_inputs):
            if any(d <= 0 for d in example_inputs):
                raise ValueError(f"example_inputs shape {tuple(example_inputs)} has a non-positive size")
            return (torch.randn(1, *example_inputs),)
        if all(isinstance(t, Tensor) for t in example_inputs):
            return tuple(example_inputs)
    raise TypeError(
        "example_inputs must be a tensor, a tuple of tensors, or a shape tuple without the batch "
        f"dimension such as (3, 32, 32); got {type(example_inputs).__name__}: {example_inputs!r:.80}"
    )


class _Tracer(fx.Tracer):
    def __init__(self, extra_leaves: Iterable[str]) -> None:
        super().__init__()
        self.extra_leaves = set(extra_leaves)
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        if isinstance(m, _ALWAYS_LEAF) or qualified_name in self.extra_leaves:
            return True
        return super().is_leaf_module(m, qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        self.stack.append(name)
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def trace(model: nn.Module, leaf_modules: Iterable[str] = ()) -> tuple[fx.GraphModule, list[str]]:
    """Trace ``model`` (unwrapped from DataParallel/DDP) with torch.fx.

    Returns the GraphModule (sharing the model's submodules, so nothing is copied) and the names
    of submodules that had to be treated as opaque leaves.
    """
    model = unwrap(model)
    leaves = list(leaf_modules)
    fallbacks: list[str] = []
    for _ in range(_MAX_FALLBACKS + 1):
        tracer = _Tracer(leaves)
        modes = {m: m.training for m in model.modules()}
        try:
            model.eval()  # trace the inference graph; the modes are restored right after
            graph = tracer.trace(model)
        except Exception as err:  # fx raises many types: TraceError, TypeError, AssertionError...
            failing = next((n for n in reversed(tracer.stack) if n), "")
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
        finally:
            for m, training in modes.items():
                m.training = training
        if fallbacks:
            warnings.warn(
                "torch.fx could not trace "
                + ", ".join(f"{n!r} ({type(model.get_submodule(n)).__name__})" for n in fallbacks)
                + "; they are treated as opaque leaves and their channels are not pruned. Pass "
                "leaf_modules=[...] to silence this, or make their forward traceable.",
                stacklevel=3,
            )
        return fx.GraphModule(model, graph, class_name=type(model).__name__), fallbacks
    raise TraceFailure(f"gave up after treating {len(fallbacks)} submodules as leaves: {fallbacks}")
