"""Sparse training (network slimming's L1 on BN gamma), fine-tuning and evaluation.

``train`` modifies the model it is given (that is what training is for); pass a deepcopy to keep
the original. The default schedule is the network-slimming recipe: SGD lr 0.1, momentum 0.9,
weight decay 1e-4, lr x0.1 at 50 % and 75 % of the epochs. Checkpoints are written atomically by
rank 0 after every epoch and can be resumed. Under ``torchrun`` (an initialised process group) the
model is wrapped in DistributedDataParallel; run ``python -m slimbench.training`` for the CLI.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from slimbench.core.inputs import unwrap
from slimbench.models.weights import load_weights
from slimbench.pruning.checkpoint import atomic_save, read_checkpoint
from slimbench.pruning.sparsity import update_bn, update_prunable_bn

__all__ = ["train", "finetune", "evaluate", "recalibrate_bn", "rank", "TRAIN_FORMAT"]

TRAIN_FORMAT = "slimbench.train/1"


def rank() -> int:
    """This process's rank under torch.distributed, 0 otherwise."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, topk: Sequence[int] = (1,)) -> dict[str, float]:
    """Top-k accuracies (fractions, e.g. ``{"top1": 0.93}``) and mean cross-entropy ``loss``.

    The model is put in eval mode for the pass and returned to its previous mode.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = {k: 0 for k in topk}
    total, loss_sum = 0, 0.0
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
            hits = top == y.unsqueeze(1)
            for k in topk:
                correct[k] += hits[:, :k].any(dim=1).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return {**{f"top{k}": correct[k] / total for k in topk}, "loss": loss_sum / total}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance as the plain average over ``loader``'s
    batches (at most ``max_batches``), forward only, weights untouched; returns the batches used.

    Training leaves running statistics as a momentum average over the last few batches of a model that
    was still changing; after a short sparse training they can be far from the model's real statistics
    (README, "Without a checkpoint"). The model's mode and each BN's momentum are restored."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training, momenta = model.training, [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    device, used = _device_of(model), 0
    try:
        for x, _ in loader:
            if max_batches is not None and used >= max_batches:
                break
            model(x.to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if used == 0:
        raise ValueError("recalibrate_bn: the loader yielded no batches")
    return used


@torch.no_grad()
def _average_buffers(model: nn.Module) -> None:
    """Average floating buffers (BN running stats) over ranks: each rank saw its own shard, and the
    checkpoint and evaluation should not depend on which rank wrote them."""
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world)


def _milestone_epochs(milestones: Sequence[float], epochs: int) -> list[int]:
    out = []
    for m in milestones:
        if not 0 < m <= 1:
            raise ValueError(f"milestones are fractions of the epochs in (0, 1], got {m!r}")
        out.append(max(1, math.floor(m * epochs + 0.5)))  # never drop before the first epoch
    return out


def _checked_options(epochs, sparsity, sparsity_on, checkpoint, resume, overwrite) -> Path | None:
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs!r}")
    if not float(sparsity) >= 0:
        raise ValueError(f"sparsity must be >= 0, got {sparsity!r}")
    if sparsity_on not in ("all", "prunable"):
        raise ValueError(f"sparsity_on must be 'all' or 'prunable', got {sparsity_on!r}")
    path = Path(checkpoint) if checkpoint is not None else None
    if resume and path is None:
        raise ValueError("resume=True needs checkpoint=PATH")
    if resume and not path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {path} to continue; pass resume=False "
                                "to start a new run")
    if path is not None and path.exists() and not resume and not overwrite:
        raise FileExistsError(f"checkpoint {path} already exists; pass resume=True to continue it or "
                              "overwrite=True to start over (the file is left as it is)")
    return path


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    data = read_checkpoint(path)
    if "state_dict" not in data or "epoch" not in data or "optimizer" not in data:
        raise ValueError(f"checkpoint {path} is not a training checkpoint (needs 'state_dict', 'optimizer', "
                         "'epoch'); to start from its weights, load them into the model and train without resume")
    load_weights(unwrap(model), data["state_dict"], f"checkpoint {path}")
    optimizer.load_state_dict(data["optimizer"])
    if "rng" in data:
        torch.set_rng_state(data["rng"])
    return int(data["epoch"]), dict(data.get("history", {}))


def train(model: nn.Module, train_loader: DataLoader, *, epochs: int, lr: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 1e-4, sparsity: float = 0.0, sparsity_on: str = "all", example_inputs=None,
          milestones: Sequence[float] = (0.5, 0.75), checkpoint: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = True, seed: int = 0, test_loader: Iterable | None = None,
          topk: Sequence[int] = (1,), steps_per_epoch: int | None = None, overwrite: bool = False,
          checkpoint_extra: dict | None = None) -> dict:
    """Train ``model`` in place with SGD; returns the history.

    ``sparsity`` > 0 adds ``s * sign(gamma)`` to BN gamma gradients every step (all BNs, or only the
    prunable ones with ``sparsity_on="prunable"``, which needs ``example_inputs`` or infers them from
    the first batch). ``test_loader`` is evaluated after each epoch. ``checkpoint`` is written after
    every epoch (rank 0 only); ``resume=True`` continues from it. ``steps_per_epoch`` caps the batches
    per epoch (smoke runs). ``checkpoint_extra`` entries are stored in every checkpoint, with ``seed``.
    The seed is applied here too, but a model built before the call was initialised with whatever
    the global RNG held: seed first (``torch.manual_seed``), then build the model, as the CLI does.
    An interrupt (Ctrl-C, or SIGTERM under the CLI) leaves the last whole checkpoint and no temporary.
    """
    path = _checked_options(epochs, sparsity, sparsity_on, checkpoint, resume, overwrite)
    torch.manual_seed(seed)
    distributed = dist.is_available() and dist.is_initialized()
    net = model
    if distributed and not isinstance(model, nn.parallel.DistributedDataParallel):
        net = nn.parallel.DistributedDataParallel(model)
    inner = unwrap(net)
    optimizer = torch.optim.SGD(inner.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    drops = _milestone_epochs(milestones, epochs)
    start, history = 0, {"epochs": []}
    if resume and path is not None:
        start, history = _resume(path, inner, optimizer)
    history.setdefault("epochs", [])
    device = _device_of(inner)
    for epoch in range(start, epochs):
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(train_loader, "generator", None)
        if generator is not None:  # the shuffle depends on (seed, epoch) only, so a resumed run matches
            generator.manual_seed(seed * 100_003 + epoch)
        for group in optimizer.param_groups:  # step schedule: x0.1 at each milestone passed
            group["lr"] = lr * 0.1 ** sum(epoch >= d for d in drops)
        net.train()
        began, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        total = len(train_loader) if steps_per_epoch is None else min(steps_per_epoch, len(train_loader))
        bar = tqdm(train_loader, total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress or rank() != 0, file=sys.stderr)
        for step, (x, y) in enumerate(bar):
            if step >= total:
                break
            x, y = x.to(device), y.to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sparsity > 0:
                if sparsity_on == "all":
                    update_bn(inner, sparsity)
                else:
                    if example_inputs is None:
                        example_inputs = tuple(x.shape[1:])
                    update_prunable_bn(inner, example_inputs, sparsity)
            optimizer.step()
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
        bar.close()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": loss_sum / max(seen, 1),
               "train_top1": correct / max(seen, 1), "seconds": time.perf_counter() - began}
        if distributed:
            _average_buffers(inner)
        if test_loader is not None:
            row.update({f"test_{k}": v for k, v in evaluate(inner, test_loader, topk).items()})
        history["epochs"].append(row)
        if path is not None and rank() == 0:
            atomic_save({"format": TRAIN_FORMAT, "state_dict": inner.state_dict(),
                         "optimizer": optimizer.state_dict(), "epoch": epoch + 1, "history": history,
                         "rng": torch.get_rng_state(), "seed": seed, **(checkpoint_extra or {})}, path)
    return history


def finetune(pruned_model: nn.Module, train_loader: DataLoader, *, epochs: int, **kwargs) -> dict:
    """Fine-tune a pruned model: the same loop and recipe as :func:`train`, without sparsity."""
    if kwargs.get("sparsity", 0):
        raise ValueError("finetune applies no sparsity; use train(..., sparsity=s) for sparse training")
    kwargs.pop("sparsity", None)
    return train(pruned_model, train_loader, epochs=epochs, sparsity=0.0, **kwargs)
