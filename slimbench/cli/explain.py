"""``slimbench explain MODEL``: which BatchNorm channels can be pruned, and why not."""

from __future__ import annotations

import argparse

from slimbench.analysis.explain import explain, format_explanation
from slimbench.analysis.graph import DEFAULT_RESIDUAL
from slimbench.cli._args import add_model_argument, resolve_model_argument
from slimbench.models.resolve import resolve_model
from slimbench.pruning.plan import RESIDUAL_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                        help="input shape without batch, e.g. 3 224 224, or one side N (default: the model's own)")
    parser.add_argument("--dataset", default=None, help="data set the registry builds the model for")
    parser.add_argument("--residual", choices=RESIDUAL_MODES, default=DEFAULT_RESIDUAL,
                        help="how channels coupled by a residual add are treated (as in `slimbench prune`)")


def run(args: argparse.Namespace) -> int:
    resolve_model_argument(args, "explain")
    model, shape = resolve_model(args.model, args.dataset, args.input_size)
    print(format_explanation(explain(model, shape, residual=args.residual)))
    return 0
