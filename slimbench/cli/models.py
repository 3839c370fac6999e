"""``slimbench models``: list what the registry can build."""

from __future__ import annotations

import argparse
import sys

from tabulate import tabulate

from slimbench.models import DATASETS, list_models
from slimbench.models.resnet_cifar import DEFAULT_SHORTCUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=list(DATASETS), default=None,
                        help="only models for this data set (default: all)")
    parser.add_argument("--counts", action="store_true",
                        help="also build each model and show params and MACs (slower; progress on stderr)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar with --counts")


def run(args: argparse.Namespace) -> int:
    rows = []
    infos = list_models(args.dataset)
    if args.counts:
        from tqdm import tqdm

        infos = tqdm(infos, desc="building models", unit="model", file=sys.stderr, disable=args.no_progress)
    for info in infos:
        row = {"name": info.name, "dataset": info.dataset, "family": info.family,
               "input": "x".join(map(str, info.input_shape)), "classes": info.num_classes}
        if args.counts:
            row.update(_counts(info))
        row["description"] = info.description
        rows.append(row)
    print(tabulate(rows, headers="keys"))
    print(f"\nCIFAR ResNets default to shortcut option {DEFAULT_SHORTCUT} (identity + zero pad, no parameters); "
          "pass shortcut='B' to get_model for the 1x1-conv projection. ILSVRC12: any torchvision "
          "classification name, weights=None; load local weights with checkpoint=PATH.")
    return 0


def _counts(info) -> dict:
    from slimbench.core.counting import conv_linear_macs

    model = info.builder(num_classes=info.num_classes).eval()
    return {"params": sum(p.numel() for p in model.parameters()),
            "MACs (M)": round(conv_linear_macs(model, tuple(info.input_shape)) / 1e6, 2)}
