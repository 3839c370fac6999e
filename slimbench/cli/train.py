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
from pathlib import Path

import torch
import torch.distributed as dist


def add_common_arguments(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    parser.add_argument("--model", required=True, help="registry name (see `slimbench models`)")
    parser.add_argument("--dataset", default="cifar10", help="cifar10, cifar100, digits or ilsvrc12")
    parser.add_argument("--data", default=None, metavar="DIR", help="data folder (not needed for digits)")
    parser.add_argument("--num-classes", type=int, default=None, help="default: the data set's")
    parser.add_argument("--input-size", type=int, default=None, help="digits / ImageFolder input side")
    parser.add_argument("--epochs", type=int, default=160, help="default 160 (the network-slimming recipe)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--milestones", type=float, nargs="*", default=[0.5, 0.75],
                        help="lr x0.1 at these fractions of the epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="cap batches per epoch (smoke runs)")
    parser.add_argument("--out", default=default_out, help="checkpoint path (written atomically every epoch)")
    parser.add_argument("--resume", action="store_true", help="continue from --out")
    parser.add_argument("--overwrite", action="store_true", help="start over even if --out exists")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--write-rank-digest", metavar="DIR", default=None,
                        help="each rank writes rank<R>.json with a SHA-256 of its final weights (DDP checks)")


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
    from slimbench.models import get_model, model_info
    from slimbench.training.loop import train

    info = model_info(args.model, args.dataset)  # fails early on a bad name
    out = Path(args.out.format(model=args.model, dataset=args.dataset))
    distributed = init_distributed()
    try:
        model = get_model(args.model, args.dataset, num_classes=args.num_classes, checkpoint=args.checkpoint)
        train_loader, test_loader = loaders_for(args, distributed)
        s = info.default_sparsity if args.sparsity is None else args.sparsity
        history = train(model, train_loader, epochs=args.epochs, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay, sparsity=s, sparsity_on=args.sparsity_on,
                        milestones=tuple(args.milestones), checkpoint=out, resume=args.resume,
                        overwrite=args.overwrite, progress=not args.no_progress, seed=args.seed,
                        test_loader=test_loader, topk=(1, 5) if args.dataset == "ilsvrc12" else (1,),
                        steps_per_epoch=args.steps_per_epoch)
        finish(args, model, history, out)
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimbench.training", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
