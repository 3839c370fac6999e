"""Loading local weights into registry models (never a download; files are read by checkpoint.read_checkpoint)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["extract_state_dict", "load_weights"]


def extract_state_dict(data: Mapping, source: str = "checkpoint") -> dict[str, Tensor]:
    """The model weights inside a plain state dict or a ``{"state_dict"|"model": ...}`` wrapper;
    the ``module.`` prefix DataParallel / DDP adds is stripped."""
    for key in ("state_dict", "model"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not data or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{source}: no state dict of tensors found (expected a state dict, or a dict with a "
                         "'state_dict' or 'model' entry)")
    if all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state`` into ``model`` strictly; shape mismatches (e.g. num_classes) name key and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        detail = []
        if missing:
            detail.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if extra:
            detail.append(f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}")
        raise ValueError(f"{source} does not fit {type(model).__name__}: {'; '.join(detail)}. Was it saved from "
                         "another architecture (or a pruned model: use slimbench.load_pruned_model)?")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            hint = (" (num_classes differs: pass num_classes matching the checkpoint)"
                    if key.endswith(("weight", "bias")) and value.dim() <= 2 and state[key].shape[1:] == value.shape[1:]
                    else "")
            raise ValueError(f"{source}: entry {key!r} has shape {tuple(state[key].shape)}, the model expects "
                             f"{tuple(value.shape)}{hint}")
    model.load_state_dict(state, strict=True)
    return model
