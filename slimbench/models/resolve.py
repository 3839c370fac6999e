"""One way to turn a model name (and options) into a model and its input shape: the zoo, then torchvision."""

from __future__ import annotations

from slimbench.models import get_model, model_info


def input_shape(input_size: list[int] | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """``--input-size``: nothing (the model's own shape), one side N (3xNxN) or a full shape."""
    if input_size is None:
        return tuple(default)
    if any(n <= 0 for n in input_size):
        raise SystemExit(f"--input-size must be positive, got {' '.join(map(str, input_size))}")
    if len(input_size) == 1:
        return (3, input_size[0], input_size[0])
    return tuple(input_size)


def resolve_model(name: str, dataset: str | None, input_size: list[int] | None,
                  checkpoint: str | None = None):
    """A model and its input shape, from the slimbench registry or torchvision.

    ``checkpoint``: a local file with weights (a state dict, a ``slimbench train`` checkpoint) or a
    pruned checkpoint, which is rebuilt at its pruned size.
    """
    for candidate in [dataset] if dataset else ["cifar10", "ilsvrc12"]:
        try:
            info = model_info(name, candidate)
            break
        except ValueError as error:
            failure = error
    else:
        raise SystemExit(f"{failure} (see `slimbench models`)") from failure
    shape = input_shape(input_size, info.input_shape)
    try:
        model = get_model(name, info.dataset, checkpoint=checkpoint)
    except (ValueError, FileNotFoundError) as error:
        if checkpoint is None:
            raise
        raise SystemExit(f"cannot load --checkpoint {checkpoint} into {name}: {error}") from error
    return model, shape
