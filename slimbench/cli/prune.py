"""``slimbench prune MODEL``: plan, prune and save; prints the per-layer summary."""

from __future__ import annotations

import argparse

from tabulate import tabulate

from slimbench.analysis.graph import DEFAULT_RESIDUAL
from slimbench.cli._args import add_model_argument, resolve_model_argument
from slimbench.core.atomic import atomic_write_text, check_destination
from slimbench.models.resolve import resolve_model
from slimbench.pruning.checkpoint import save_pruned_model
from slimbench.pruning.criteria import METHODS
from slimbench.pruning.plan import BRANCH_MODES, RESIDUAL_MODES
from slimbench.pruning.surgery import plan as make_plan
from slimbench.pruning.surgery import prune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--checkpoint", help="load these (unpruned, e.g. sparse-trained) weights first")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                        help="input shape without batch (3 224 224) or one side N for 3xNxN")
    parser.add_argument("--method", choices=list(METHODS), default="network_slimming", help="pruning criterion")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--ratio", type=float, default=0.5, help="fraction of prunable channels to remove")
    budget.add_argument("--target-macs", type=float, help="fraction of the unpruned MACs to keep")
    parser.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of N")
    parser.add_argument("--residual", choices=RESIDUAL_MODES, default=DEFAULT_RESIDUAL,
                        help="channels coupled by a residual add: keep whole, shared importance, or select")
    parser.add_argument("--branches", choices=BRANCH_MODES, default="keep",
                        help="remove residual branches whose last BN falls under the threshold")
    parser.add_argument("--output", "-o", help="write the pruned model (with its plan) here")
    parser.add_argument("--plan-json", help="also write the plan as JSON here")


def run(args: argparse.Namespace) -> int:
    resolve_model_argument(args, "prune")
    for option, path in (("--output", args.output), ("--plan-json", args.plan_json)):
        if path is not None:
            check_destination(path, option=option)
    model, shape = resolve_model(args.model, args.dataset, args.input_size, args.checkpoint)
    ratio = None if args.target_macs is not None else args.ratio  # plan refuses both
    plan = make_plan(model, shape, method=args.method, ratio=ratio, target_macs=args.target_macs,
                     round_to=args.round_to, residual=args.residual, branches=args.branches)
    pruned = prune(model, plan=plan)
    rows = [r for r in plan.summary() if r["after"] != r["before"]]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print(f"\nconv+linear MACs: {plan.macs_before / 1e6:.2f}M -> {plan.macs_after / 1e6:.2f}M "
          f"({1 - plan.macs_after / plan.macs_before:.1%} fewer); {plan.pruned_channels} BN channels removed")
    if args.output:
        print(f"saved to {save_pruned_model(pruned, args.output, plan=plan)}")
    if args.plan_json:
        atomic_write_text(args.plan_json, plan.to_json(indent=1))
    return 0
