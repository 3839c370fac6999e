"""``slimbench report``: prune models at several ratios and tabulate params, MACs, FLOPs, accuracy and
CPU latency (every registered backend asked for, interleaved in this process), with speedups.

Without ``--checkpoint`` gamma must still mean something, so each model is first sparse-trained
briefly (on the bundled digits by default: scikit-learn's 8x8 images, trained and evaluated at
their own 8x8 size to fit the 90 s budget; counts and latency always at the model's own input
shape), and each pruned variant is fine-tuned for a few steps; the caption says exactly what was done.
The recipe (TRAINING: 10 epochs, s = 1e-2, lr 0.05, 8x8; per model family FAMILY_TRAINING, e.g. lr 0.02
for VGG) polarises gamma so that network slimming at 0.5 keeps >= 95 % of the unpruned accuracy on
ResNet-56 and >= 90 % on VGG-19; BN running statistics are recomputed on the training split before
each model is evaluated. tests/bench/test_report.py checks both retentions.
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

from slimbench.analysis.graph import DEFAULT_RESIDUAL
from slimbench.bench.latency import environment, require_backends, speedup, speedup_iqr, time_models
from slimbench.bench.report_latency import equal_latency_options, latency_note, latency_tables, planned
from slimbench.bench.variants import (
    DEFAULT_RATIOS,
    METHODS,
    apply_variant,
    count_model,
    variants_for,
)
from slimbench.pruning.options import check_latency_settings
from slimbench.pruning.plan import PruningPlan

__all__ = ["ReportSettings", "Report", "build_report", "latency_backend"]


# The report's training recipe without --checkpoint (sparse training from scratch on the bundled digits, then
# a short fine-tune of each pruned model). Measured on ResNet-56 (8x8 digits): 10 epochs at lr 0.05 and s = 1e-2
# polarise gamma so that network slimming at 0.5 keeps >= 95 % of the unpruned accuracy; lr 0.1 (the paper's)
# diverges from scratch in a few epochs; gamma starts at 0.5 as network slimming's own code does, so L1 can
# separate it. train_size None: 8 (the digits' own), or the smallest of 16, 32 the model runs at.
# bn_batches: after sparse training from scratch, every model (unpruned, and each pruned one after its fine-tune)
# gets its BN running statistics recomputed over this many training batches (all of the digits' 43) before it is
# evaluated: a few epochs leave them a momentum average of a model still changing, which on VGG-19 read 32 % where
# the same weights on batch statistics read 99 % (README). 0: off.
TRAINING: dict = {"epochs": 10, "lr": 0.05, "sparsity": 1e-2, "gamma_init": 0.5, "train_size": None,
                  "finetune_steps": 15, "finetune_lr": 0.005, "bn_batches": 50}
# Per model family (ModelInfo.family), what differs from TRAINING and why (measured, README "Without a checkpoint").
FAMILY_TRAINING: dict[str, dict] = {
    # VGG-19 at 16x16 (its four max-pools): lr 0.05 trains unstably (loss back up to 0.9 in epoch 3, 92 % on its own
    # training batches at the end) and even with recomputed BN statistics reads 76 % unpruned; lr 0.02 polarises
    # gamma (median 4e-4, 90th percentile 0.08) and reads 98.4 % unpruned, 98.7 % at network slimming 0.5.
    # lr 0.01 keeps every gamma at 0.10-0.29 (s only shrinks them all alike): pruning at 0.5 then reads 10 %.
    "vgg": {"lr": 0.02},
}


@dataclass
class ReportSettings:
    models: Sequence[str] = ("resnet56",)
    ratios: Sequence[float] = DEFAULT_RATIOS
    methods: Sequence[str] = METHODS
    data: str = "digits"  # "digits", or "cifar10=DIR" / "cifar100=DIR" / "ilsvrc12=DIR"
    checkpoint: str | None = None
    # None: the model's recipe (TRAINING, FAMILY_TRAINING below); a value applies to every model
    epochs: int | None = None
    bn_batches: int | None = None
    sparsity: float | None = None
    lr: float | None = None
    train_batch: int = 32
    gamma_init: float | None = None
    train_size: int | None = None  # digits side; None: the recipe's (TRAINING)
    train_steps: int | None = None  # cap on batches per epoch (smoke runs and tests)
    finetune_steps: int | None = None
    finetune_lr: float | None = None
    batch_size: int = 1
    threads: int = 1
    backends: Sequence[str] = ("torch", "ort")
    latency_time: float = 0.2
    round_to: int = 1
    seed: int = 0
    progress: bool = True
    # per model, at the middle ratio: network slimming round_to=8, and network slimming with latency-aware widths
    # planned to that model's measured latency (the equal-latency comparison of issue 14)
    latency_aware: bool = False
    latency_table_timing: dict | None = None  # measure() options of its latency table, only to shorten it (tests)

    def training(self, family: str) -> dict:
        """The training recipe a model of ``family`` gets: TRAINING, then its FAMILY_TRAINING entry, then
        every setting given explicitly (not None)."""
        recipe = {**TRAINING, **FAMILY_TRAINING.get(family, {})}
        return {k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in recipe.items()}

    def run_record(self) -> dict:
        """The settings behind every number, as the report files record them (None: per model, see the run
        record's ``training``)."""
        return {"models": list(self.models), "data": self.data, "checkpoint": self.checkpoint,
                "epochs": self.epochs, "train_steps": self.train_steps, "train_batch": self.train_batch,
                "train_size": self.train_size, "sparsity": self.sparsity, "lr": self.lr,
                "gamma_init": self.gamma_init, "finetune_steps": self.finetune_steps,
                "finetune_lr": self.finetune_lr, "bn_batches": self.bn_batches,
                "latency_batch_size": self.batch_size, "threads": self.threads,
                "backends": list(self.backends), "latency_time_s": self.latency_time, "round_to": self.round_to,
                "seed": self.seed, "latency_aware": self.latency_aware,
                **({"latency_table_timing": dict(self.latency_table_timing)} if self.latency_table_timing else {})}

    def latency_options(self) -> dict:
        """Latency settings of the latency-aware row: its table is measured on the report's latency backend,
        batch and threads, cached under the default cache dir (``$SLIMBENCH_CACHE``); the report builds
        the (calibrated) latency model from them once per model."""
        settings = {"backend": latency_backend(self.backends), "threads": self.threads, "batch": self.batch_size,
                    "progress": self.progress}
        if self.latency_table_timing:
            settings["timing"] = dict(self.latency_table_timing)
        return {"latency": settings}


def latency_backend(backends: Sequence[str]) -> str:
    """The backend latency-aware widths are planned on: onnxruntime when the report times it (its
    channel blocks are what the widths follow), else the first of ``backends``."""
    return "ort" if "ort" in backends else backends[0]


@dataclass
class Report:
    rows: list[dict]
    caption: str
    gammas: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    run: dict = field(default_factory=dict)  # settings + environment (machine, CPU, versions, commit)
    thresholds: dict[str, dict[float, float]] = field(default_factory=dict)  # model -> ratio -> gamma threshold
    plans: dict[str, PruningPlan] = field(default_factory=dict)  # case -> the plan its pruned model was built from


def _info(name: str, dataset: str):
    """ModelInfo; an architecture of another data set (ILSVRC12 ResNets) runs on ``dataset``'s shape."""
    from slimbench.models.resolve import resolve_info

    return resolve_info(name, dataset, any_architecture=True)


def _gammas(model: nn.Module) -> np.ndarray:
    return torch.cat([m.weight.detach().abs().flatten() for m in model.modules()
                      if isinstance(m, _BatchNorm) and m.affine]).numpy()


def _train_size(model: nn.Module, asked: int | None) -> int:
    """The digits side to train at: ``asked``, else the smallest of 8, 16, 32 the model runs at (VGG's
    four max-pools need 16)."""
    if asked is not None:
        return asked
    was_training = model.training
    model.eval()
    try:
        for side in (8, 16):
            try:
                with torch.no_grad():
                    model(torch.zeros(1, 3, side, side))
            except RuntimeError:
                continue
            return side
        return 32
    finally:
        model.train(was_training)


def _prepare(name: str, s: ReportSettings, t: dict, dataset: str, root: str | None, notes: list[str]):
    from slimbench.data import get_loaders
    from slimbench.models import load_checkpoint
    from slimbench.training.loop import train

    info = _info(name, dataset)
    torch.manual_seed(s.seed)
    model = info.builder(num_classes=info.num_classes)
    if s.checkpoint:
        model = load_checkpoint(model, s.checkpoint)
    size = _train_size(model, t["train_size"]) if dataset == "digits" else None
    train_loader, test_loader = get_loaders(dataset, root, batch_size=s.train_batch, input_size=size,
                                            test_batch_size=256, seed=s.seed)
    if not s.checkpoint and t["epochs"] > 0:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, _BatchNorm) and m.affine:
                    m.weight.fill_(t["gamma_init"])
        train(model, train_loader, epochs=t["epochs"], lr=t["lr"], sparsity=t["sparsity"], progress=False, seed=s.seed,
              milestones=(0.67,), steps_per_epoch=s.train_steps)
        _recalibrate(model, train_loader, t)
        notes.append(f"{name}: gamma from {t['epochs']} epoch(s) of sparse training from scratch (gamma init "
                     f"{t['gamma_init']:g}, s={t['sparsity']:g}, SGD lr {t['lr']:g} momentum 0.9, x0.1 for the last "
                     f"third) on "
                     f"{dataset}" + (f" at {size}x{size}" if size else "")
                     + (f", at most {s.train_steps} batches per epoch" if s.train_steps else "") + " (no --checkpoint)"
                     + (f"; BN running statistics recomputed on {t['bn_batches']} training batches (at most) before "
                        "each model is evaluated" if t["bn_batches"] else ""))
    elif not s.checkpoint:
        notes.append(f"{name}: untrained (--epochs 0): gamma cannot rank channels, accuracy is chance")
    else:
        notes.append(f"{name}: weights and gamma from {s.checkpoint}")
    return model.eval(), info, train_loader, test_loader, size


def _recalibrate(model: nn.Module, loader, t: dict) -> None:
    from slimbench.training.loop import recalibrate_bn

    if t["bn_batches"]:
        recalibrate_bn(model, loader, t["bn_batches"])
        model.eval()


def _threshold(model: nn.Module, plan) -> float | None:
    """The largest |gamma| the plan prunes: network slimming's global threshold at its ratio."""
    pruned = [model.get_submodule(bn).weight.detach().abs()[~keep] for bn, keep in plan.masks.items()]
    pruned = [t for t in pruned if t.numel()]
    return float(torch.cat(pruned).max()) if pruned else None


def _timed(rows: list[dict], timings: dict, base_case: str) -> None:
    """Latency columns of every row: median, timing IQR / median, speedup and its spread per backend."""
    for row in rows:
        for backend, by_case in timings.items():
            t, ref = by_case[row["case"]], by_case[base_case]
            row[f"latency_{backend}_ms"] = t.median_ms
            row[f"iqr_{backend}"] = t.iqr_fraction
            row[f"speedup_{backend}"] = speedup(ref, t)
            row[f"speedup_{backend}_iqr"] = speedup_iqr(ref, t)


def _report_model(name: str, s: ReportSettings, bar) -> tuple[list[dict], np.ndarray, dict, list[str], dict, dict]:
    from slimbench.data import parse_data_option
    from slimbench.training.loop import evaluate, finetune

    dataset, root = parse_data_option(s.data)
    notes: list[str] = []
    bar.set_description(f"{name}: training" if not s.checkpoint else f"{name}: loading")
    t = s.training(_info(name, dataset).family)
    model, info, train_loader, test_loader, size = _prepare(name, s, t, dataset, root, notes)
    untrained = not s.checkpoint and t["epochs"] == 0
    x = torch.randn(1, *info.input_shape, generator=torch.Generator().manual_seed(s.seed))
    rows, models, thresholds, plans, matched = [], {}, {}, {}, {}
    equal_latency = None  # options of the latency-aware rows: one calibrated latency model serves them all
    for variant in variants_for(info.residual, ratios=s.ratios, methods=s.methods, round_to=s.round_to,
                                latency_aware=s.latency_aware):
        aware = variant.budget == "latency"
        bar.set_description(f"{name}: {variant.label} {variant.ratio:g}"
                            + (f" (latency model on {latency_backend(s.backends)})" if aware else ""))
        if aware and equal_latency is None:
            equal_latency, matched = equal_latency_options(name, model, x, s.latency_options()["latency"], plans,
                                                           variant.ratio)
        pruned, plan = apply_variant(model, x, variant, equal_latency if aware else None)
        if plan is not None and variant.method == "network_slimming" and variant.residual == DEFAULT_RESIDUAL \
                and variant.branches == "keep" and variant.round_to == s.round_to and not aware:
            thresholds[variant.ratio] = _threshold(model, plan)
        if plan is not None:
            plans[variant.key(name)] = getattr(pruned, "slimbench_plan", plan)  # as verified by prune
        if aware:
            matched["rows"][variant.label] = planned(plans[variant.key(name)])
        if t["finetune_steps"] and variant.method != "unpruned":
            finetune(pruned, train_loader, epochs=1, steps_per_epoch=t["finetune_steps"], lr=t["finetune_lr"],
                     milestones=(1.0,), progress=False, seed=s.seed)
        if variant.method != "unpruned" and not s.checkpoint and t["epochs"] > 0:
            _recalibrate(pruned, train_loader, t)  # after its fine-tune, which leaves momentum averages again
        accuracy = evaluate(pruned.eval(), test_loader)["top1"]
        counts = count_model(pruned, x)
        key = variant.key(name)
        models[key] = pruned
        rows.append({"model": name, "method": variant.label, "ratio": variant.ratio, **counts,
                     "accuracy": accuracy, "dataset": dataset, "untrained": untrained, "case": key,
                     "train_size": size})
        bar.update(1)
    bar.set_description(f"{name}: latency")
    timings = time_models(models, x, backends=s.backends, threads=s.threads, batch_size=s.batch_size,
                          min_time_s=s.latency_time)
    _timed(rows, timings, rows[0]["case"])
    if matched:
        aware_plan = next(p for p in plans.values() if p.options.get("target_latency") is not None)
        notes.append(latency_note(name, aware_plan.options["latency"]["table"], matched))
    if t["finetune_steps"]:
        notes.append(f"{name}: each pruned model fine-tuned {t['finetune_steps']} steps (batch {s.train_batch}, "
                     f"lr {t['finetune_lr']:g}) before evaluation")
    notes.append(f"{name}: params/MACs/latency at {'x'.join(map(str, info.input_shape))}, batch {s.batch_size}, "
                 f"{s.threads} thread(s); accuracy on the {dataset} test split")
    return (rows, _gammas(model), {r: t for r, t in thresholds.items() if t is not None}, notes, plans,
            {name: matched} if matched else {})


def _check(settings: ReportSettings) -> str:
    """Validate the settings before any work; returns the data set name."""
    from slimbench.data import parse_data_option

    repeated = sorted({n for n in settings.models if list(settings.models).count(n) > 1})
    if repeated:
        raise ValueError(f"--models lists {', '.join(repeated)} more than once; each model's speedups are "
                         "against its own unpruned row, so name each model once")
    if settings.checkpoint and len(settings.models) != 1:
        raise ValueError(f"--checkpoint applies to one model; got --models {' '.join(settings.models)}")
    for option in ("epochs", "finetune_steps", "bn_batches", "train_batch", "threads", "batch_size", "train_size"):
        value, least = getattr(settings, option), 0 if option in ("epochs", "finetune_steps", "bn_batches") else 1
        if value is not None and value < least:
            raise ValueError(f"--{option.replace('_', '-')} must be >= {least}, got {value}")
    require_backends(settings.backends)
    if settings.latency_aware:
        check_latency_settings(settings.latency_options()["latency"])
    return parse_data_option(settings.data)[0]


def build_report(settings: ReportSettings) -> Report:
    """Run every model of ``settings`` and return rows, caption, provenance, gamma values, thresholds and
    the plan of every pruned row (``Report.plans``, by case)."""
    start = time.perf_counter()
    dataset = _check(settings)
    total = sum(len(variants_for(_info(n, dataset).residual, ratios=settings.ratios, methods=settings.methods,
                                 round_to=settings.round_to, latency_aware=settings.latency_aware))
                for n in settings.models)
    rows, gammas, thresholds, notes, plans, matched = [], {}, {}, [], {}, {}
    with tqdm(total=total, disable=not settings.progress, file=sys.stderr, unit="variant") as bar:
        for name in settings.models:
            model_rows, gammas[name], thresholds[name], model_notes, model_plans, model_matched = \
                _report_model(name, settings, bar)
            rows += model_rows
            notes += model_notes
            plans.update(model_plans)
            matched.update(model_matched)
    counting = ("MACs = conv+linear multiply-accumulates" if rows and rows[0]["flops"] is not None
                else "MACs = conv+linear multiply-accumulates (torch FlopCounterMode); FLOPs need thop_ext")
    caption = "; ".join([*notes, counting, "speedup = unpruned median / pruned median, measured interleaved, "
                         "(IQR) = spread of the per-round speedups"])
    run = {"settings": settings.run_record(), "environment": environment(settings.threads),
           # per model, the recipe it was trained and fine-tuned with (TRAINING, its family's entry, explicit settings)
           "training": {name: settings.training(_info(name, dataset).family) for name in settings.models}}
    if settings.latency_aware:
        run["latency_tables"] = latency_tables(rows, plans, matched)
    return Report(rows, caption, gammas, time.perf_counter() - start, run, thresholds, plans)
