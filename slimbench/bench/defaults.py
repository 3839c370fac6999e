"""The evidence behind the ``residual`` default: keep / shared / select side by side.

``python -m slimbench.bench.defaults`` prunes the zoo (and a sample of the sweep's models) at
``ratio=0.5`` with random BN gamma under each residual mode and records, per model and mode: MACs
removed (``thop_ext``), whether the pruned model equals ``slimbench.zero_bn_channels`` (relative
error), onnxruntime latency of the pruned model relative to the unpruned one (one thread, all
variants of a model timed interleaved in one ``measure`` call), and residual branches: how many the
model has, how many ``branches="remove"`` removes when a branch's last BN is entirely pruned, and how
many netslim's rule (any BN of the branch entirely pruned) would remove. docs/defaults.md holds a run.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["MODES", "study_model", "branch_rules", "main"]

MODES = ("keep", "shared", "select")
ZOO = (("zoo", "resnet56", (3, 32, 32)), ("zoo", "resnet164", (3, 32, 32)), ("zoo", "densenet40", (3, 32, 32)),
       ("zoo", "vgg19", (3, 32, 32)), ("torchvision", "resnet50", (3, 224, 224)),
       ("torchvision", "mobilenet_v2", (3, 224, 224)))
SAMPLE = (("torchvision", "resnet18", (3, 128, 128)), ("torchvision", "densenet121", (3, 128, 128)),
          ("torchvision", "regnet_x_400mf", (3, 128, 128)), ("torchvision", "efficientnet_b0", (3, 128, 128)),
          ("timm", "resnet10t", (3, 128, 128)), ("timm", "cspnext_tiny", (3, 128, 128)),
          ("timm", "dla46_c", (3, 128, 128)), ("timm", "ese_vovnet19b_slim", (3, 128, 128)))


def _build(source: str, name: str) -> nn.Module:
    from slimbench.bench.sweep_case import Case, _build, _randomize_bn

    torch.manual_seed(0)
    if source == "zoo":
        from slimbench.models import get_model

        model = get_model(name, "cifar10")
    else:
        model = _build(Case(source, name, source), 0)
    _randomize_bn(model, 0)
    return model.eval()


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def study_model(model: nn.Module, shape: tuple[int, ...], *, ratio: float = 0.5, latency: bool = True,
                min_time_s: float = 1.5) -> dict:
    """Per residual mode: MACs removed, equivalence error, ORT speedup; plus the branch counts."""
    import slimbench
    import thop_ext
    from slimbench.bench.latency import time_models

    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    base = thop_ext.profile(model, (x,)).macs
    row: dict = {"macs": base}
    pruned_models = {"unpruned": model}
    for mode in MODES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plan = slimbench.plan(model, x, ratio=ratio, residual=mode)
                pruned = slimbench.prune(model, x, plan=plan).eval()
            with torch.no_grad():
                err = _rel_err(pruned(x), slimbench.zero_bn_channels(model, plan).eval()(x))
            row[mode] = {"removed": 1 - thop_ext.profile(pruned, (x,)).macs / base, "err": err}
            pruned_models[mode] = pruned
        except Exception as exc:  # recorded, not fatal: the table shows which mode fails where
            row[mode] = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]}
    if latency:
        timings = time_models(pruned_models, (x,), backends=("ort",), threads=1, min_time_s=min_time_s)["ort"]
        for mode in MODES:
            if mode in timings:
                row[mode]["speedup"] = timings["unpruned"].median_ms / timings[mode].median_ms
        row["ort_ms"] = timings["unpruned"].median_ms
    row["branches"] = branch_rules(model, x, ratio)
    row["branches_dead"] = branch_rules(model, x, ratio, dead_layers=2)
    return row


def branch_rules(model: nn.Module, x: torch.Tensor, ratio: float = 0.5, dead_layers: int = 0) -> dict:
    """How many residual branches the graph finds, and which of them each removal rule removes.

    ``last``: ours (the branch's last BN entirely under the global threshold); ``any``: netslim's
    (any BN inside the branch entirely under it). ``dead_layers`` first sets every gamma of that many
    BNs per rule to 1e-4 (the first BN of one branch, the last BN of another, ...) to give the rules
    something to act on: random gamma almost never empties a whole layer.
    """
    import slimbench
    from slimbench.pruning.criteria import global_threshold

    graph = slimbench.analyze(model, x).graph()
    if dead_layers and graph.branches:
        model = _with_dead_layers(model, graph.branches, dead_layers)
        graph = slimbench.analyze(model, x).graph()
    plan = slimbench.plan(model, x, ratio=ratio, branches="remove")
    from slimbench.pruning.importance import bn_scores, class_importance

    candidates = graph.prunable_classes() & ~graph.class_residual
    importance = class_importance(graph, bn_scores(graph, model, "gamma"))
    threshold = global_threshold(importance, candidates, ratio)
    modules = dict(model.named_modules())

    def empty(name: str) -> bool:
        module = modules[name]
        return isinstance(module, _BatchNorm) and bool((module.weight.detach().abs() <= threshold).all())

    anyrule = [b.bn for b in graph.branches if any(empty(m) for m in b.modules | {b.bn})]
    return {"found": len(graph.branches), "removed_last": len(plan.branches), "removed_any": len(anyrule)}


def _with_dead_layers(model: nn.Module, branches: list, count: int) -> nn.Module:
    import copy

    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for i, branch in enumerate(branches[: 2 * count]):
            bns = sorted(m for m in branch.modules if isinstance(modules[m], _BatchNorm))
            target = branch.bn if i % 2 or not bns else bns[0]
            modules[target].weight.fill_(1e-4)
    return model


def _fmt(cell: dict) -> str:
    if "error" in cell:
        return f"fails: {cell['error'][:90]}"
    ok = "ok" if cell["err"] <= 1e-4 else f"**differs {cell['err']:.1e}**"
    speed = f", ORT x{cell['speedup']:.2f}" if "speedup" in cell else ""
    return f"{100 * cell['removed']:.1f} % ({ok}{speed})"


def render(rows: dict[str, dict]) -> str:
    lines = ["| model | input | keep | shared | select | branches found | removed: ours / netslim rule "
             "(random γ; 4 layers emptied) |", "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        b, d = row["branches"], row["branches_dead"]
        lines.append(f"| {name} | {row['input']} | " + " | ".join(_fmt(row[m]) for m in MODES)
                     + f" | {b['found']} | {b['removed_last']} / {b['removed_any']}; "
                     f"{d['removed_last']} / {d['removed_any']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimbench.bench.defaults", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/defaults.json"))
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--models", default="", help="comma-separated subset")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    for source, name, shape in ZOO + SAMPLE:
        if args.models and name not in args.models.split(","):
            continue
        row = study_model(_build(source, name), shape, latency=not args.no_latency)
        row["input"] = "x".join(map(str, shape))
        rows[name] = row
        print(name, json.dumps(row, default=float), file=sys.stderr, flush=True)
    from slimbench.core.atomic import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(rows, indent=1, default=float))
    print(render(rows))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
