"""``slimbench report``: prune models at several ratios and tabulate params, MACs, FLOPs, accuracy and
CPU latency (torch eager and onnxruntime, interleaved in this process), with speedups.

Without ``--checkpoint`` gamma must still mean something, so each model is first sparse-trained
briefly (on the bundled digits by default: scikit-learn's 8x8 images, trained and evaluated at
16x16 to fit the 90 s budget; counts and latency always at the model's own input shape), and each
pruned variant is fine-tuned for a few steps; the caption says exactly what was done.
Defaults were measured on 2 cores: resnet56 reaches ~98 % on the digits test split in ~22 s.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from slimbench.bench.latency import BACKENDS, time_models
from slimbench.bench.variants import DEFAULT_RATIOS, METHODS, apply_variant, count_model, variants_for

__all__ = ["ReportSettings", "Report", "build_report"]


@dataclass
class ReportSettings:
    models: Sequence[str] = ("resnet56",)
    ratios: Sequence[float] = DEFAULT_RATIOS
    methods: Sequence[str] = METHODS
    data: str = "digits"  # "digits", or "cifar10=DIR" / "cifar100=DIR" / "ilsvrc12=DIR"
    checkpoint: str | None = None
    epochs: int = 3
    sparsity: float = 1e-2
    lr: float = 0.02  # lr 0.1 (the paper's) diverges in 3 epochs from scratch; 0.02 reaches ~98 %
    train_batch: int = 32
    gamma_init: float = 0.5  # network slimming's own code starts gamma at 0.5 so L1 can separate it
    train_size: int = 16
    train_steps: int | None = None  # cap on batches per epoch (smoke runs and tests)
    finetune_steps: int = 15
    finetune_lr: float = 0.005
    batch_size: int = 1
    threads: int = 1
    backends: Sequence[str] = ("torch", "ort")
    latency_time: float = 0.2
    round_to: int = 1
    progress: bool = True


@dataclass
class Report:
    rows: list[dict]
    caption: str
    gammas: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


def _resolve(name: str, dataset: str):
    """ModelInfo; ILSVRC12 architectures run on digits at 3x32x32 with 10 classes."""
    from slimbench.models import model_info

    try:
        return model_info(name, dataset), None
    except ValueError:
        if dataset != "digits":
            raise
        info = model_info(name, "ilsvrc12")
        return info, (3, 32, 32)


def _gammas(model: nn.Module) -> np.ndarray:
    return torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                      if isinstance(m, _BatchNorm) and m.affine]).numpy()


def _prepare(name: str, s: ReportSettings, dataset: str, root: str | None, notes: list[str]):
    from slimbench.data import get_loaders
    from slimbench.models import get_model
    from slimbench.training.loop import train

    info, shape_override = _resolve(name, dataset)
    shape = shape_override or info.input_shape
    classes = 10 if shape_override else info.num_classes
    torch.manual_seed(0)
    if s.checkpoint:
        model = get_model(name, info.dataset, num_classes=classes, checkpoint=s.checkpoint)
    else:
        model = info.builder(num_classes=classes)
    size = s.train_size if dataset == "digits" else None
    train_loader, test_loader = get_loaders(dataset, root, batch_size=s.train_batch, input_size=size,
                                            test_batch_size=256)
    if not s.checkpoint and s.epochs > 0:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    m.weight.fill_(s.gamma_init)
        train(model, train_loader, epochs=s.epochs, lr=s.lr, sparsity=s.sparsity, progress=False, seed=0,
              milestones=(0.67,), steps_per_epoch=s.train_steps)
        notes.append(f"{name}: gamma from {s.epochs} epoch(s) of sparse training from scratch (gamma init "
                     f"{s.gamma_init:g}, s={s.sparsity:g}, SGD lr {s.lr:g} momentum 0.9, x0.1 for the last third) on "
                     f"{dataset}" + (f" at {size}x{size}" if size else "")
                     + (f", at most {s.train_steps} batches per epoch" if s.train_steps else "") + " (no --checkpoint)")
    elif not s.checkpoint:
        notes.append(f"{name}: untrained (--epochs 0): gamma cannot rank channels, accuracy is chance")
    else:
        notes.append(f"{name}: weights and gamma from {s.checkpoint}")
    return model.eval(), shape, train_loader, test_loader


def _report_model(name: str, s: ReportSettings, bar) -> tuple[list[dict], np.ndarray, list[str]]:
    from slimbench.data import parse_data_option
    from slimbench.training.loop import evaluate, finetune

    dataset, root = parse_data_option(s.data)
    notes: list[str] = []
    bar.set_description(f"{name}: training" if not s.checkpoint else f"{name}: loading")
    model, shape, train_loader, test_loader = _prepare(name, s, dataset, root, notes)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    variants = variants_for(_resolve(name, dataset)[0].family, ratios=s.ratios, methods=s.methods,
                            round_to=s.round_to)
    rows, models = [], {}
    for variant in variants:
        bar.set_description(f"{name}: {variant.label} {variant.ratio:g}")
        pruned, _plan = apply_variant(model, x, variant)
        if s.finetune_steps and variant.method != "unpruned":
            finetune(pruned, train_loader, epochs=1, steps_per_epoch=s.finetune_steps, lr=s.finetune_lr,
                     milestones=(1.0,), progress=False, seed=0)
        accuracy = evaluate(pruned.eval(), test_loader)["top1"]
        counts = count_model(pruned, x)
        key = variant.key(name)
        models[key] = pruned
        rows.append({"model": name, "method": variant.label, "ratio": variant.ratio, **counts,
                     "accuracy": accuracy, "dataset": dataset, "latency_torch_ms": None, "latency_ort_ms": None,
                     "case": key})
        bar.update(1)
    bar.set_description(f"{name}: latency")
    timings = time_models(models, x, backends=s.backends, threads=s.threads, batch_size=s.batch_size,
                          min_time_s=s.latency_time)
    for row in rows:
        for backend, by_case in timings.items():
            t = by_case[row["case"]]
            row[f"latency_{backend}_ms"] = t.median_ms
            row[f"iqr_{backend}"] = t.iqr_fraction
    if s.finetune_steps:
        notes.append(f"{name}: each pruned model fine-tuned {s.finetune_steps} steps (batch {s.train_batch}, "
                     f"lr {s.finetune_lr:g}) before evaluation")
    notes.append(f"{name}: params/MACs/latency at {'x'.join(map(str, shape))}, batch {s.batch_size}, "
                 f"{s.threads} thread(s); accuracy on the {dataset} test split")
    return rows, _gammas(model), notes


def build_report(settings: ReportSettings) -> Report:
    """Run every model of ``settings`` and return rows, caption and the gamma values for the plot."""
    start = time.perf_counter()
    if settings.checkpoint and len(settings.models) != 1:
        raise ValueError(f"--checkpoint applies to one model; got --models {' '.join(settings.models)}")
    for option in ("epochs", "finetune_steps", "train_batch", "threads", "batch_size", "train_size"):
        value, least = getattr(settings, option), 0 if option in ("epochs", "finetune_steps") else 1
        if value < least:
            raise ValueError(f"--{option.replace('_', '-')} must be >= {least}, got {value}")
    for backend in settings.backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown --backends value {backend!r}; choose from {', '.join(BACKENDS)}")
    from slimbench.data import parse_data_option

    dataset = parse_data_option(settings.data)[0]
    total = sum(len(variants_for(_resolve(n, dataset)[0].family, ratios=settings.ratios, methods=settings.methods))
                for n in settings.models)
    rows, gammas, notes = [], {}, []
    with tqdm(total=total, disable=not settings.progress, file=sys.stderr,
              unit="variant") as bar:
        for name in settings.models:
            model_rows, gammas[name], model_notes = _report_model(name, settings, bar)
            rows += model_rows
            notes += model_notes
    counting = ("MACs = conv+linear multiply-accumulates" if rows and rows[0]["flops"] is not None
                else "MACs = conv+linear multiply-accumulates (torch FlopCounterMode); FLOPs need thop_ext")
    caption = "; ".join([*notes, counting, "speedup = unpruned median / pruned median, measured interleaved"])
    return Report(rows, caption, gammas, time.perf_counter() - start)
