"""``slimbench profile MODEL``: per-layer MACs / FLOPs / params table and totals."""

from __future__ import annotations

import argparse

from slimbench.cli._args import add_model_argument, resolve_model_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--dataset", default=None,
                        help="registry data set: cifar10 (default), cifar100, digits or ilsvrc12")
    parser.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                        help="input shape without batch, e.g. 3 224 224, or one side N (default: the data set's)")
    parser.add_argument("--checkpoint", default=None,
                        help="weights to load first; a pruned checkpoint is rebuilt at its pruned size")
    parser.add_argument("--no-skip-zero", action="store_true",
                        help="count every weight, including all-zero kernel slices and dead BN channels")
    parser.add_argument("--exact", action="store_true", help="print integers instead of K / M / G units")
    parser.add_argument("--all-rows", action="store_true", help="also list modules that count nothing")
    parser.add_argument("--tablefmt", default="simple", help="tabulate format (simple, github, ...)")


def run(args: argparse.Namespace) -> int:
    resolve_model_argument(args, "profile")
    from slimbench.models.resolve import resolve_model
    from thop_ext import profile

    model, shape = resolve_model(args.model, args.dataset, args.input_size, args.checkpoint)
    result = profile(model.eval(), tuple(shape), skip_zero=not args.no_skip_zero)
    print(result.table(tablefmt=args.tablefmt, exact=args.exact, all_rows=args.all_rows))
    print(f"\n{args.model}, input 1x{'x'.join(map(str, shape))}: {result.summary()}")
    print(f"exact: MACs {result.macs:,}  FLOPs {result.flops:,}  params {result.params:,}")
    print("MACs = conv + linear multiply-accumulates (bias excluded); FLOPs = 2 x MACs + bias adds + "
          "elementwise ops (BN, activations, pooling, adds)")
    return 0
