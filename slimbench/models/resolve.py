"""One way to turn a model name (and options) into a model and its input shape: the zoo, then torchvision.

Every command resolves names here, so a typo gets one answer: the closest name among the CIFAR zoo
*and* torchvision together (``resnt56`` -> ``resnet56``, ``densnet40`` -> ``densenet40``).
"""

from __future__ import annotations

import dataclasses
import difflib

from slimbench.core.errors import SlimbenchValueError
from slimbench.models import _CIFAR, CIFAR_STYLE, DATASETS, ModelInfo, get_model, model_info
from slimbench.models.torchvision_zoo import available_torchvision_names

__all__ = ["input_shape", "resolve_info", "resolve_model", "suggest"]


def suggest(name: str) -> str | None:
    """The closest known model name (zoo and torchvision together), or None."""
    close = difflib.get_close_matches(name, [*_CIFAR, *available_torchvision_names()], n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(name: str, dataset: str | None) -> SlimbenchValueError:
    if dataset in CIFAR_STYLE and name in available_torchvision_names():
        return SlimbenchValueError(f"model {name!r} is a torchvision (ILSVRC12) model; use --dataset ilsvrc12, "
                                   f"or a CIFAR zoo model for {dataset}: {', '.join(_CIFAR)}")
    if dataset == "ilsvrc12" and name in _CIFAR:
        return SlimbenchValueError(f"model {name!r} is a CIFAR zoo model; use --dataset cifar10, cifar100 or "
                                   "digits, or a torchvision name for ilsvrc12 (see `slimbench models`)")
    hint = suggest(name)
    return SlimbenchValueError(
        f"unknown model {name!r}" + (f"; did you mean {hint!r}?" if hint else "")
        + f" CIFAR zoo: {', '.join(_CIFAR)}; ILSVRC12: any torchvision classification name "
        "(e.g. resnet50, mobilenet_v2); see `slimbench models`")


def resolve_info(name: str, dataset: str | None = None, *, any_architecture: bool = False) -> ModelInfo:
    """The registry record of ``name`` on ``dataset`` (default: the CIFAR zoo, then torchvision).

    ``any_architecture``: an architecture registered for another data set is run on ``dataset`` at its
    shape and class count (ILSVRC12 ResNets on the digits, as ``slimbench report`` does).
    """
    if dataset is not None and dataset not in DATASETS:
        raise SlimbenchValueError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if dataset is None:
        candidates = ["cifar10", "ilsvrc12"]
    elif any_architecture:
        candidates = [dataset, *(d for d in ("cifar10", "ilsvrc12") if d != dataset)]
    else:
        candidates = [dataset]
    for candidate in candidates:
        try:
            info = model_info(name, candidate)
        except ValueError:
            continue
        if dataset is not None and candidate != dataset:
            data = DATASETS[dataset]
            info = dataclasses.replace(info, dataset=dataset, input_shape=data.input_shape,
                                       num_classes=data.num_classes)
        return info
    raise _unknown(name, dataset)


def input_shape(input_size: list[int] | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """``--input-size``: nothing (the model's own shape), one side N (3xNxN) or a full shape."""
    if input_size is None:
        return tuple(default)
    if any(n <= 0 for n in input_size):
        raise SlimbenchValueError(f"--input-size must be positive, got {' '.join(map(str, input_size))}")
    if len(input_size) == 1:
        return (3, input_size[0], input_size[0])
    return tuple(input_size)


def resolve_model(name: str, dataset: str | None, input_size: list[int] | None,
                  checkpoint: str | None = None):
    """A model and its input shape, from the slimbench registry or torchvision.

    ``checkpoint``: a local file with weights (a state dict, a ``slimbench train`` checkpoint) or a
    pruned checkpoint, which is rebuilt at its pruned size.
    """
    info = resolve_info(name, dataset)
    shape = input_shape(input_size, info.input_shape)
    try:
        model = get_model(name, info.dataset, checkpoint=checkpoint)
    except (ValueError, FileNotFoundError) as error:
        if checkpoint is None:
            raise
        raise SlimbenchValueError(f"cannot load --checkpoint {checkpoint} into {name}: {error}") from error
    return model, shape
