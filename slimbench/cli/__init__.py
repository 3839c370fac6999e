"""The ``slimbench`` command: a table of subcommands, one module each under ``slimbench.cli``.

A module registered here exposes ``add_arguments(parser)`` and ``run(args) -> int``; it is
imported only when its subcommand runs, so ``slimbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimbench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0 if argv else 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"slimbench {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
