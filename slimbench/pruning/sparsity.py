"""L1 sparsity on BatchNorm scale factors (network slimming's regulariser).

Call between ``loss.backward()`` and ``optimizer.step()``: it adds ``s * sign(gamma)`` to each
selected gamma's gradient, the subgradient of ``s * |gamma|``.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from slimbench.core.errors import SlimbenchValueError
from slimbench.core.inputs import unwrap
from slimbench.core.modules import BATCHNORM_TYPES

__all__ = ["update_bn", "update_bn_by_names", "update_prunable_bn", "batchnorms"]


class _NotABatchNorm(SlimbenchValueError, KeyError):
    """A name that is not a batch-norm module (a KeyError too, as netslim raised)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""



def batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """All batch-norm modules of ``model`` by qualified name (wrappers unwrapped)."""
    return {name: m for name, m in unwrap(model).named_modules() if isinstance(m, BATCHNORM_TYPES)}


def _check_s(s: float) -> float:
    s = float(s)
    if not s >= 0:  # also rejects NaN
        raise SlimbenchValueError(f"sparsity s must be a non-negative number, got {s!r}")
    return s


@torch.no_grad()
def _add_l1_subgradient(bns: Iterable[nn.Module], s: float) -> int:
    touched = 0
    for bn in bns:
        weight = getattr(bn, "weight", None)
        if weight is None or weight.grad is None:
            continue  # affine=False, frozen, or not part of this backward pass
        weight.grad.add_(torch.sign(weight), alpha=s)
        touched += 1
    return touched


def update_bn(model: nn.Module, s: float = 1e-4) -> int:
    """Apply the L1 subgradient to every BN gamma of ``model``; returns how many BNs it touched."""
    s = _check_s(s)
    return _add_l1_subgradient(batchnorms(model).values(), s)


def update_bn_by_names(model: nn.Module, names: Iterable[str] | Mapping[str, float], s: float | None = None) -> int:
    """Apply the L1 subgradient to the BNs named in ``names`` only.

    ``names``: qualified module names of the unwrapped model (a ``module.`` prefix from a
    DataParallel / DDP ``state_dict`` is accepted too), all with strength ``s`` (default 1e-4); or
    netslim's form, a dict ``{name: s}`` with one strength per BN (then ``s`` must not be given).
    """
    if isinstance(names, str):
        raise TypeError("names must be a collection of module names, not a single string")
    if isinstance(names, Mapping):
        if s is not None:
            raise TypeError("update_bn_by_names: pass either a dict {name: s} or names with one s, not both")
        strengths = {name: _check_s(value) for name, value in names.items()}
    else:
        one = _check_s(1e-4 if s is None else s)
        strengths = {name: one for name in names}
    available = batchnorms(model)
    chosen: dict[float, list[nn.Module]] = {}
    for name, strength in strengths.items():
        key = name[len("module."):] if name.startswith("module.") and name not in available else name
        if key not in available:
            hint = difflib.get_close_matches(key, list(available), n=3)
            raise _NotABatchNorm(
                f"update_bn_by_names: {name!r} is not a batch-norm module of "
                f"{type(unwrap(model)).__name__}"
                + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else
                   "; use slimbench.prunable_bn_names(model, inputs) to list valid names")
            )
        chosen.setdefault(strength, []).append(available[key])
    return sum(_add_l1_subgradient(bns, strength) for strength, bns in chosen.items())


_PRUNABLE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def update_prunable_bn(model: nn.Module, example_inputs, s: float = 1e-4, *, residual: str | None = None) -> int:
    """Apply the L1 subgradient only to BNs whose channels pruning can remove.

    ``residual`` is the mode you will plan with (default: the plan's default): with ``"keep"``, BNs
    joined by residual adds are never pruned, so they get no sparsity either.
    The trace is cached per model object (weakly, nothing is stored on the model), so calling
    this every step is cheap.
    """
    from slimbench.analysis.explain import prunable_bn_names
    from slimbench.analysis.graph import DEFAULT_RESIDUAL

    residual = residual or DEFAULT_RESIDUAL
    inner = unwrap(model)
    per_mode = _PRUNABLE_CACHE.setdefault(inner, {})
    names = per_mode.get(residual)
    if names is None:
        names = per_mode[residual] = tuple(prunable_bn_names(inner, example_inputs, residual=residual))
    return update_bn_by_names(inner, names, s)
