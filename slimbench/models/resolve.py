"""One way to turn a model name (and options) into a model and its input shape, for every command
(``prune``, ``profile``, ``explain``) and for ``slimbench report``: the zoo, then torchvision."""

from __future__ import annotations

import dataclasses

from slimbench.models import DATASETS, ModelInfo, get_model, model_info

__all__ = ["input_shape", "resolve_info", "resolve_model"]


def input_shape(input_size: list[int] | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """``--input-size``: nothing (the model's own shape), one side N (3xNxN) or a full shape."""
    if input_size is None:
        return tuple(default)
    if any(n <= 0 for n in input_size):
        raise SystemExit(f"--input-size must be positive, got {' '.join(map(str, input_size))}")
    if len(input_size) == 1:
        return (3, input_size[0], input_size[0])
    return tuple(input_size)


def resolve_info(name: str, dataset: str | None = None, *, any_architecture: bool = False) -> ModelInfo:
    """``name``'s :class:`ModelInfo` on ``dataset``; without one, the first of cifar10, ilsvrc12 that
    knows ``name``. ``any_architecture``: an architecture registered for another data set is run on
    ``dataset`` at its shape and class count (ILSVRC12 ResNets on the digits, as ``slimbench report``
    does). Raises ValueError naming the valid choices."""
    if dataset is None:
        candidates = ["cifar10", "ilsvrc12"]
    elif any_architecture:
        candidates = [dataset, *(d for d in ("cifar10", "ilsvrc12") if d != dataset)]
    else:
        candidates = [dataset]
    failure: ValueError | None = None
    for candidate in candidates:
        try:
            info = model_info(name, candidate)
        except ValueError as error:
            failure = failure or error
            continue
        if dataset is not None and candidate != dataset:
            data = DATASETS[dataset]
            info = dataclasses.replace(info, dataset=dataset, input_shape=data.input_shape,
                                       num_classes=data.num_classes)
        return info
    assert failure is not None
    raise failure


def resolve_model(name: str, dataset: str | None, input_size: list[int] | None,
                  checkpoint: str | None = None):
    """A model and its input shape, from the slimbench registry or torchvision.

    ``checkpoint``: a local file with weights (a state dict, a ``slimbench train`` checkpoint) or a
    pruned checkpoint, which is rebuilt at its pruned size.
    """
    try:
        info = resolve_info(name, dataset)
    except ValueError as failure:
        raise SystemExit(f"{failure} (see `slimbench models`)") from failure
    shape = input_shape(input_size, info.input_shape)
    try:
        model = get_model(name, info.dataset, checkpoint=checkpoint)
    except (ValueError, FileNotFoundError) as error:
        if checkpoint is None:
            raise
        raise SystemExit(f"cannot load --checkpoint {checkpoint} into {name}: {error}") from error
    return model, shape
