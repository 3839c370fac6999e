"""The ``slimbench`` command: a table of subcommands, one module each under ``slimbench.cli``.

A module registered here exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when its subcommand runs, so ``slimbench --help`` stays fast (no torch).
Every command speaks with one voice: expected errors end as ``slimbench CMD: error: ...`` on stderr
with exit status 2 (``--debug`` shows the traceback); Ctrl-C and SIGTERM clean up and exit 130 / 143.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from slimbench import __version__
from slimbench.core.errors import SlimbenchError, Terminated, sigterm_raises

COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("slimbench.cli.report", "prune models at several ratios; tabulate params, MACs, accuracy, latency"),
    "profile": ("slimbench.cli.profile", "per-layer MACs / params table of a model (pruning-aware thop)"),
    "models": ("slimbench.cli.models", "list the models the registry can build"),
    "train": ("slimbench.cli.train", "sparse-train a model (network slimming's L1 on BN gamma)"),
    "finetune": ("slimbench.cli.finetune", "fine-tune a pruned model"),
    "prune": ("slimbench.cli.prune", "prune a model or checkpoint and save the result"),
    "explain": ("slimbench.cli.explain", "which BatchNorm channels can be pruned, and why not"),
    "compare": ("slimbench.cli.compare", "compare two benchmark runs: exact counts, in-run latency ratios"),
    "regress": ("slimbench.cli.regress", "time this tree against a git ref, interleaved: pruned ONNX, plan, profile"),
}

# what bad input raises; anything else is a bug and keeps its traceback
EXPECTED_ERRORS = (SlimbenchError, ValueError, TypeError, OSError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for options whose default is None or False (nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.help is None or "%(default)" in action.help:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"slimbench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one subcommand (imports its module)."""
    module_name, help_text = COMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"slimbench {name}", description=help_text,
                                     formatter_class=HelpFormatter)
    importlib.import_module(module_name).add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def run_guarded(prog: str, run, args: argparse.Namespace) -> int:
    """Run ``run(args)`` with SIGTERM raised as an interrupt and expected errors as one line (exit 2)."""
    try:
        with sigterm_raises():
            return int(run(args) or 0)
    except KeyboardInterrupt as stop:
        print(f"{prog}: {stop or 'interrupted'}; temporary files removed", file=sys.stderr)
        return 143 if isinstance(stop, Terminated) else 130
    except EXPECTED_ERRORS as error:
        if getattr(args, "debug", False):
            raise
        text = str(error) if not isinstance(error, OSError) or error.filename is None else \
            f"{error.strerror or error}: {error.filename}"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(argv) and argv[0] == "--debug"
    if debug:
        argv = argv[1:]
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and not argv[0].startswith("-"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        if argv:
            parser.parse_args(argv)  # --help, --version, or an error
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    args = command_parser(name).parse_args(argv[1:])
    args.debug = args.debug or debug
    return run_guarded(f"slimbench {name}", importlib.import_module(COMMANDS[name][0]).run, args)


if __name__ == "__main__":
    sys.exit(main())
