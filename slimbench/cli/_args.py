"""Arguments several commands share, spelled the same everywhere (imported only by command modules)."""

from __future__ import annotations

import argparse

from slimbench.core.errors import SlimbenchValueError

MODEL_HELP = "a slimbench zoo name (see `slimbench models`) or a torchvision name"


def add_model_argument(parser: argparse.ArgumentParser, *, flag_first: bool = False) -> None:
    """``MODEL`` and ``--model MODEL`` both work in every single-model command; help shows the
    command's usual spelling (``flag_first``: ``--model``, as train / finetune document it)."""
    parser.add_argument("model_positional", nargs="?", metavar="MODEL",
                        help=argparse.SUPPRESS if flag_first else MODEL_HELP)
    parser.add_argument("--model", dest="model_option", metavar="MODEL",
                        help=MODEL_HELP if flag_first else argparse.SUPPRESS)


def resolve_model_argument(args: argparse.Namespace, command: str) -> str:
    """The model name from ``MODEL`` or ``--model`` (exactly one of them), stored as ``args.model``."""
    given = [m for m in (args.model_positional, args.model_option) if m is not None]
    if not given:
        raise SlimbenchValueError(f"which model? slimbench {command} MODEL (or --model MODEL); "
                                  "see `slimbench models`")
    if len(given) == 2 and given[0] != given[1]:
        raise SlimbenchValueError(f"two models given ({given[0]} and --model {given[1]}); pass one")
    args.model = given[0]
    return args.model
