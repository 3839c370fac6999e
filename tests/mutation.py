"""A snapshot of everything a public call must leave unchanged in the caller's model."""

from __future__ import annotations

import torch
from torch import nn

_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_state_dict_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def snapshot(model: nn.Module) -> dict:
    """Module tree, per-module attributes and modes, hooks, and every parameter and buffer (values too)."""
    return {
        "tree": [(name, type(m).__name__, m.training, sorted(vars(m)),
                  {h: list(getattr(m, h, {})) for h in _HOOKS},
                  sorted(m._modules), sorted(m._parameters), sorted(m._buffers))
                 for name, m in model.named_modules(remove_duplicate=False)],
        "tensors": {name: (id(t), t.dtype, t.device, t.requires_grad, t.detach().clone())
                    for name, t in [*model.named_parameters(), *model.named_buffers()]},
    }


def assert_unchanged(before: dict, model: nn.Module, call: str) -> None:
    after = snapshot(model)
    assert after["tree"] == before["tree"], f"{call} changed the module tree, modes, attributes or hooks"
    assert after["tensors"].keys() == before["tensors"].keys(), f"{call} added or removed tensors"
    for name, (ident, dtype, device, grad, value) in before["tensors"].items():
        now = after["tensors"][name]
        assert now[:4] == (ident, dtype, device, grad), f"{call} replaced or re-typed {name}"
        assert torch.equal(now[4], value), f"{call} changed the values of {name}"
