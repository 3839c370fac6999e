"""``slimbench compare [BASE CAND]``: counts exactly, latency through in-run ratios; exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import sys

from slimbench.bench.regression import DEFAULT_TOLERANCE, DEFAULT_Z


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="BASE CAND",
                        help="two pytest-benchmark JSON files (a side may be a glob or comma-joined shards), "
                             "or one .benchmarks folder whose last two runs are compared (default: .benchmarks)")
    add_judging_arguments(parser)


def add_judging_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "md", "json"), default="table",
                        help="terminal table (default), GitHub markdown for CI summaries, or JSON")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"smallest slowdown of a ratio called a regression (default {DEFAULT_TOLERANCE})")
    parser.add_argument("-z", type=float, default=DEFAULT_Z,
                        help=f"standard errors a move must also exceed (default {DEFAULT_Z})")


def run(args: argparse.Namespace) -> int:
    from slimbench.bench.compare import BadInput, compare_runs, load_run, render, sides_from_args

    try:
        base_paths, cand_paths = sides_from_args(args.paths)
        comparison = compare_runs(load_run(base_paths), load_run(cand_paths), tolerance=args.tolerance, z=args.z)
    except BadInput as error:
        print(f"slimbench compare: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render(comparison, args.format))
    return comparison.exit_code
