"""``slimbench train``: sparse-train a registry model (network slimming's recipe by default).

Also the entry point of ``torchrun --nproc_per_node N -m slimbench.training ...``: with WORLD_SIZE > 1
it joins a process group (gloo on CPU, nccl on CUDA), shards the training data, and only rank 0
writes the checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from slimbench.cli._args import add_model_argument, resolve_model_argument


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    add_model_argument(parser, flag_first=True)
    parser.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, digits or ilsvrc12")
    parser.add_argument("--data", default=None, metavar="DIR", help="data folder (not needed for digits)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: the data set's")
    parser.add_argument("--input-size", type=int, default=None, help="digits / ImageFolder input side")
    parser.add_argument("--epochs", type=int, default=160, help="training epochs (160: the network-slimming recipe)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--weight-decay", type=float, default=1e-4, help="SGD weight decay")
    parser.add_argument("--milestones", type=float, nargs="*", default=[0.5, 0.75],
                        help="lr x0.1 at these fractions of the epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="cap batches per epoch (smoke runs)")
    parser.add_argument("-o", "--output", dest="out", default=default_out,
                        help="checkpoint path (written atomically every epoch)")
    parser.add_argument("--out", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old spelling
    parser.add_argument("--resume", action="store_true", help="continue from --output (which must exist)")
    parser.add_argument("--overwrite", action="store_true", help="start over even if --output exists")
    parser.add_argument("--seed", type=int, default=0, help="seeds model init, shuffling and augmentation")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True): bitwise repeatable, maybe slower")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--write-rank-digest", metavar="DIR", default=None,
                        help="each rank writes rank<R>.json with a SHA-256 of its final weights (DDP checks)")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before anything random happens (model init included)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """``--deterministic``: torch's deterministic algorithms for the block, the previous setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def prepare_output(args: argparse.Namespace) -> Path:
    """Check ``--output`` / ``--resume`` / ``--overwrite`` before any work, naming the flags."""
    from slimbench.core.atomic import check_destination
    from slimbench.core.errors import SlimbenchValueError

    sparsity = getattr(args, "sparsity", None)
    checks = [("--epochs", args.epochs, args.epochs >= 1, ">= 1"),
              ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1"),
              ("--lr", args.lr, args.lr > 0, "> 0"),
              ("--steps-per-epoch", args.steps_per_epoch, args.steps_per_epoch is None or args.steps_per_epoch >= 1,
               ">= 1"),
              ("--sparsity", sparsity, sparsity is None or sparsity >= 0, ">= 0"),
              ("--milestones", " ".join(map(str, args.milestones)), all(0 < m <= 1 for m in args.milestones),
               "fractions of the epochs in (0, 1]")]
    for flag, value, ok, rule in checks:
        if not ok:
            raise SlimbenchValueError(f"{flag} {value}: must be {rule}")
    out = Path(args.out.format(model=args.model, dataset=args.dataset))
    check_destination(out, option="--output", create_parent=True)
    if args.resume and args.overwrite:
        raise SlimbenchValueError("--resume and --overwrite contradict each other; pass one")
    if args.resume and not out.is_file():
        raise SlimbenchValueError(f"--resume: there is no checkpoint at {out} to continue; drop --resume to "
                                  "start a new run, or pass the --output of the run to continue")
    if out.exists() and not args.resume and not args.overwrite:
        raise SlimbenchValueError(f"--output {out} already exists; pass --resume to continue it or --overwrite "
                                  "to start over (the file is left as it is)")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, default_out="runs/{model}-{dataset}-sparse.pt")
    parser.add_argument("--checkpoint", default=None, help="start from these weights (state dict)")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="L1 strength s on BN gamma (default: 1e-4 for VGG, 1e-5 otherwise; 0 = plain)")
    parser.add_argument("--sparsity-on", choices=["all", "prunable"], default="all")


def init_distributed() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def state_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def loaders_for(args: argparse.Namespace, distributed: bool):
    """The data loaders (read and validated before any model is built or trained)."""
    from slimbench.data import get_loaders

    return get_loaders(args.dataset, args.data, batch_size=args.batch_size, input_size=args.input_size,
                       seed=args.seed, distributed=distributed)


def finish(args: argparse.Namespace, model: torch.nn.Module, history: dict, out: Path) -> None:
    from slimbench.training.loop import rank

    if args.write_rank_digest:
        folder = Path(args.write_rank_digest)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{rank()}.json").write_text(json.dumps({"rank": rank(), "sha256": state_digest(model)}))
    if rank() == 0:
        last = history["epochs"][-1] if history["epochs"] else {}
        summary = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last.items())
        print(f"{out}: {summary}")


def run(args: argparse.Namespace) -> int:
    from slimbench.models import get_model
    from slimbench.models.resolve import resolve_info
    from slimbench.training.loop import train

    info = resolve_info(resolve_model_argument(args, "train"), args.dataset)  # fails early on a bad name
    out = prepare_output(args)
    distributed = init_distributed()
    try:
        with deterministic_mode(args.deterministic):
            train_loader, test_loader = loaders_for(args, distributed)
            seed_everything(args.seed)
            model = get_model(args.model, args.dataset, num_classes=args.num_classes, checkpoint=args.checkpoint)
            s = info.default_sparsity if args.sparsity is None else args.sparsity
            history = train(model, train_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                            weight_decay=args.weight_decay, sparsity=s, sparsity_on=args.sparsity_on,
                            milestones=tuple(args.milestones), checkpoint=out, resume=args.resume,
                            overwrite=args.overwrite, progress=not args.no_progress, seed=args.seed,
                            test_loader=test_loader, topk=(1, 5) if args.dataset == "ilsvrc12" else (1,),
                            steps_per_epoch=args.steps_per_epoch,
                            checkpoint_extra={"deterministic": args.deterministic})
            finish(args, model, history, out)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from slimbench.cli import HelpFormatter, run_guarded

    parser = argparse.ArgumentParser(prog="python -m slimbench.training", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return run_guarded(parser.prog, run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
