"""``slimbench explain MODEL``: which BatchNorm channels can be pruned, and why not."""

from __future__ import annotations

import argparse

from .graph import explain, format_explanation
from .plan import RESIDUAL_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="torchvision model name (e.g. resnet50) or a slimbench registry name")
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                        help="input shape without batch, e.g. 3 224 224 (default: the model's own)")
    parser.add_argument("--dataset", default=None, help="data set the registry builds the model for")
    parser.add_argument("--residual", choices=RESIDUAL_MODES, default="keep")


def resolve_model(name: str, dataset: str | None, input_size: list[int] | None):
    """A model and its input shape, from the slimbench registry or torchvision."""
    try:
        from .models import get_model, model_info
    except ImportError:
        get_model = model_info = None
    if model_info is not None:
        try:
            info = model_info(name, dataset or "cifar10")
            return get_model(name, dataset or "cifar10"), tuple(input_size or info.input_shape)
        except (KeyError, ValueError):
            pass
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise SystemExit(f"unknown model {name!r}: not in the slimbench registry nor in torchvision.models")
    return torchvision.models.get_model(name, weights=None), tuple(input_size or (3, 224, 224))


def run(args: argparse.Namespace) -> int:
    model, shape = resolve_model(args.model, args.dataset, args.input_size)
    print(format_explanation(explain(model, shape, residual=args.residual)))
    return 0
