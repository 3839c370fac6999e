"""``slimbench finetune``: fine-tune a pruned checkpoint (``slimbench prune`` / ``save_pruned_model``).

The result is written in the pruned-checkpoint format (with the plan), so ``load_pruned_model`` and
``get_model(..., checkpoint=...)`` rebuild it, and ``--resume`` continues it.
"""

from __future__ import annotations

import argparse

import torch.distributed as dist

from slimbench.cli._args import resolve_model_argument
from slimbench.cli.train import (
    add_common_arguments,
    deterministic_mode,
    finish,
    init_distributed,
    loaders_for,
    prepare_output,
    seed_everything,
)

PRUNED_KEYS = ("format", "plan", "input_shapes", "branches_removed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pruned", required=True, metavar="PATH",
                        help="pruned checkpoint written by `slimbench prune` (with its plan)")
    add_common_arguments(parser, default_out="runs/{model}-{dataset}-finetuned.pt")


def run(args: argparse.Namespace) -> int:
    from slimbench.core.errors import SlimbenchValueError
    from slimbench.models import get_model
    from slimbench.models.resolve import resolve_info
    from slimbench.pruning.checkpoint import read_checkpoint
    from slimbench.training.loop import finetune

    resolve_info(resolve_model_argument(args, "finetune"), args.dataset)  # fails early on a bad name
    out = prepare_output(args)
    source = read_checkpoint(args.pruned)
    if "plan" not in source:
        raise SlimbenchValueError(f"--pruned {args.pruned} has no pruning plan; write it with "
                                  "`slimbench prune -o PATH` or slimbench.save_pruned_model(model, path, plan=plan)")
    distributed = init_distributed()
    try:
        with deterministic_mode(args.deterministic):
            train_loader, test_loader = loaders_for(args, distributed)
            seed_everything(args.seed)
            model = get_model(args.model, args.dataset, num_classes=args.num_classes, checkpoint=args.pruned)
            history = finetune(model, train_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay, milestones=tuple(args.milestones), checkpoint=out,
                               resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                               seed=args.seed, test_loader=test_loader,
                               topk=(1, 5) if args.dataset == "ilsvrc12" else (1,),
                               steps_per_epoch=args.steps_per_epoch,
                               checkpoint_extra={**{k: source[k] for k in PRUNED_KEYS if k in source},
                                                 "deterministic": args.deterministic})
            finish(args, model, history, out)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0
