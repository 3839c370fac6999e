"""Leaving a model exactly as it was after thop ran on it.

``thop.profile`` registers ``total_ops`` / ``total_params`` buffers and forward hooks on every
module and ends with ``model.train(previous)``, which flattens per-module modes (a frozen BN in
eval inside a training model comes back in training mode). :class:`ModelStateGuard` records what
it needs and puts everything back, even when the forward pass raises.
"""

from __future__ import annotations

from torch import nn

__all__ = ["ModelStateGuard"]


class _ModuleState:
    __slots__ = ("module", "training", "buffers", "hook_dicts")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.training = module.training
        self.buffers = dict(module._buffers)
        self.hook_dicts = {name: dict(getattr(module, name)) for name in _HOOK_DICTS if hasattr(module, name)}

    def restore(self) -> None:
        module = self.module
        module.training = self.training
        if module._buffers.keys() != self.buffers.keys() or any(
                module._buffers[k] is not v for k, v in self.buffers.items()):
            module._buffers.clear()
            module._buffers.update(self.buffers)
        for name, saved in self.hook_dicts.items():
            current = getattr(module, name)
            for key in [k for k in current if k not in saved]:
                del current[key]


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
               "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


class ModelStateGuard:
    """Context manager: on exit, every module's mode, buffers and forward hooks are as on entry."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.states: list[_ModuleState] = []

    def __enter__(self) -> ModelStateGuard:
        self.states = [_ModuleState(m) for m in self.model.modules()]
        return self

    def __exit__(self, *exc) -> None:
        for state in self.states:
            state.restore()
