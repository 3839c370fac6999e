"""What every stage takes in: example inputs in any of their forms, and the model inside its wrappers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ExampleInputs", "as_example_inputs", "unwrap"]

ExampleInputs = Tensor | Sequence[Tensor] | Sequence[int]


def as_example_inputs(example_inputs: ExampleInputs, *, like: Tensor | None = None,
                      what: str = "example_inputs") -> tuple[Tensor, ...]:
    """Normalise a tensor, a tuple of tensors or a shape tuple such as (3, 32, 32).

    A shape becomes a batch-1 random tensor, on ``like``'s device and dtype when given; ``what``
    names the argument in errors.
    """
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list, torch.Size)) and example_inputs:
        if all(isinstance(d, int) and not isinstance(d, bool) for d in example_inputs):
            if any(d <= 0 for d in example_inputs):
                raise ValueError(f"{what} shape {tuple(example_inputs)} has a non-positive size")
            if like is None:
                return (torch.randn(1, *example_inputs),)
            return (torch.randn(1, *example_inputs, device=like.device, dtype=like.dtype),)
        if all(isinstance(t, Tensor) for t in example_inputs):
            return tuple(example_inputs)
    raise TypeError(
        f"{what} must be a tensor, a tuple of tensors, or a shape tuple without the batch "
        f"dimension such as (3, 32, 32); got {type(example_inputs).__name__}: {example_inputs!r:.80}"
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / ``torch.compile`` wrappers (or the model itself)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod  # torch.compile's wrapper; checked by name so torch._dynamo is not imported
        else:
            return model
