"""``slimbench regress --against REF``: this tree against a git ref, interleaved; exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import sys

from slimbench.cli.compare import add_judging_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--against", required=True, metavar="REF",
                        help="git ref or commit to compare with (e.g. origin/main); it is checked out in a "
                             "temporary worktree, removed afterwards")
    parser.add_argument("--repo", default=".", help="the repository whose working tree is the candidate (default .)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME",
                        help="zoo models (NAME or NAME@dataset; default resnet56 vgg19 mobilenet_v2)")
    parser.add_argument("-k", dest="keyword", default=None,
                        help="only cases whose key contains this text (keys: onnx:resnet56/0.5, "
                             "plan+prune:vgg19/0.5, profile:mobilenet_v2)")
    parser.add_argument("--rounds", type=int, default=9,
                        help="alternated calls per version for plan+prune and profile (default 9)")
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="CPU seconds each version's ONNX model runs, interleaved (default 1.0)")
    add_judging_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from slimbench.bench.compare import BadInput, render
    from slimbench.bench.regress import run_regress

    try:
        comparison = run_regress(args.against, repo=args.repo, models=args.models, keyword=args.keyword,
                                 rounds=args.rounds, min_time_s=args.min_time, tolerance=args.tolerance, z=args.z,
                                 log=lambda message: print(message, file=sys.stderr, flush=True))
    except (BadInput, RuntimeError) as error:  # bad input, or a version that cannot run: nothing compared
        print(f"slimbench regress: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render(comparison, args.format, title=f"slimbench regress --against {args.against}"))
    return comparison.exit_code
