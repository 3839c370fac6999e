"""One model of the sweep, run inside a worker process: build, randomise BN, prune, verify, classify.

See :mod:`slimbench.bench.sweep` for the categories and the driver.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Case", "CATEGORIES", "PRUNED_ENOUGH", "run_case"]

CATEGORIES = ("pruned", "pruned-a-little", "refused", "WRONG", "CRASH", "TIMEOUT", "skipped")
PRUNED_ENOUGH = 0.20  # fraction of MACs removed for "pruned"
SIZES = (64, 96, 128, 160, 224, 256, 299)
_MARK = "@@sweep@@ "
_SLIMBENCH_DIR = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class Case:
    source: str  # "torchvision" or "timm"
    name: str
    family: str = ""


# ---------------------------------------------------------------- one model (runs in the worker)

def _build(case: Case, seed: int):
    import torch

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.source == "timm":
            import timm

            return timm.create_model(case.name, pretrained=False)
        import torchvision

        extra = {"aux_logits": False, "init_weights": True} if case.name in ("googlenet", "inception_v3") else {}
        return torchvision.models.get_model(case.name, weights=None, **extra)


def _meta_params(case: Case, seed: int) -> int:
    """Parameter count from a build on the meta device (0 when the builder needs real tensors)."""
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in _build(case, seed).parameters())
    except Exception:  # e.g. torchvision's RegNet initialises with in-place copies: build it for real
        return 0


def _randomize_bn(model, seed: int) -> int:
    """Random gamma in (0, 1), small beta and running stats for every BN; returns how many BNs."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    g = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                count += 1
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return count


def _tensors(value) -> list:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _input_size(model, case: Case) -> int:
    """The smallest of ``SIZES`` (and the model's own default size) on which the unpruned model runs."""
    import torch

    sizes = list(SIZES)
    if case.source == "timm":
        default = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224))[-1]
        sizes = sorted({*(s for s in sizes if s < default), default})
    last = None
    for size in sizes:
        try:
            with torch.no_grad():
                model(torch.randn(1, 3, size, size))
            return size
        except Exception as exc:  # too small for this model: try the next size
            last = exc
    raise _Skip(f"the unpruned model runs at none of the sizes {sizes}: {type(last).__name__}: {last}")


class _Skip(Exception):
    """The model cannot be built or run here; not slimbench's doing."""


def _fingerprint(model) -> tuple:
    """What a public call must not change: module tree, modes, hooks, parameters and buffers."""
    modules = tuple((n, type(m).__name__, m.training, len(m._forward_hooks), len(m._forward_pre_hooks))
                    for n, m in model.named_modules())
    state = tuple((k, tuple(v.shape), float(v.double().sum())) for k, v in model.state_dict().items()
                  if hasattr(v, "shape"))
    return modules, state


def _max_rel_diff(out, ref) -> float:
    outs, refs = _tensors(out), _tensors(ref)
    if len(outs) != len(refs) or any(a.shape != b.shape for a, b in zip(outs, refs, strict=True)):
        return float("inf")
    worst = 0.0
    for a, b in zip(outs, refs, strict=True):
        scale = max(float(b.abs().max()), 1e-12) if b.numel() else 1.0
        diff = float((a.double() - b.double()).abs().max()) if b.numel() else 0.0
        worst = max(worst, diff / scale)
    return worst


def _compare(pruned, reference, x) -> float:
    """Relative error of pruned vs reference: float32 at 1e-4, else float64 (whose error is the verdict)."""
    import copy

    import torch

    with torch.no_grad():
        err = _max_rel_diff(pruned(x), reference(x))
        if err <= 1e-4:
            return err
        return _max_rel_diff(copy.deepcopy(pruned).double()(x.double()), copy.deepcopy(reference).double()(x.double()))


def _is_refusal(exc: BaseException) -> bool:
    """A deliberate error: slimbench's own type, or a ValueError/RuntimeError/TypeError that a ``raise``
    statement in slimbench's code raised (a numpy or torch error surfacing at a slimbench line is not)."""
    if type(exc).__module__.startswith("slimbench"):
        return True
    if not isinstance(exc, (ValueError, RuntimeError, TypeError)) or not str(exc).strip():
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_SLIMBENCH_DIR) and _is_raise(
        frames[-1].filename, frames[-1].lineno)


@functools.lru_cache(maxsize=64)
def _raise_lines(filename: str) -> frozenset[int]:
    """Every line that belongs to a ``raise`` statement of a source file."""
    tree = ast.parse(Path(filename).read_text())
    return frozenset(line for node in ast.walk(tree) if isinstance(node, ast.Raise)
                     for line in range(node.lineno, (node.end_lineno or node.lineno) + 1))


def _is_raise(filename: str, lineno: int | None) -> bool:
    try:
        return lineno in _raise_lines(filename)
    except (OSError, SyntaxError):
        return False


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def _macs(model, x) -> int:
    import thop_ext

    result = thop_ext.profile(model, (x,))
    return int(result.macs if hasattr(result, "macs") else result[0])


def run_case(case: Case, *, ratio: float = 0.5, seed: int | None = None, max_params: int = 0,
             plan_options: dict | None = None) -> dict:
    """Prune one model and classify the outcome (see the module docstring); never raises.

    ``plan_options`` (e.g. ``{"residual": "shared"}``) go to ``slimbench.plan``; none: the defaults."""
    import torch

    import slimbench

    seed = zlib.crc32(case.name.encode()) if seed is None else seed
    record = {"model": case.name, "source": case.source, "family": case.family, "category": "skipped",
              "reason": "", "has_bn": None, "params": None, "input": None, "macs_before": None,
              "macs_after": None, "kept": None, "error": None, "notes": [], "seconds": 0.0}
    start = time.perf_counter()
    try:
        torch.set_num_threads(1)
        meta_params = _meta_params(case, seed) if max_params else 0  # building a huge model takes minutes
        if meta_params > max_params:
            raise _Skip(f"{meta_params / 1e6:.0f}M parameters > --max-params")
        model = _build(case, seed).eval()
        record["params"] = sum(p.numel() for p in model.parameters())
        record["has_bn"] = _randomize_bn(model, seed) > 0
        size = _input_size(model, case)
        record["input"] = [3, size, size]
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    except Exception as exc:
        record.update(reason=f"model: {_reason(exc)}"[:300], seconds=time.perf_counter() - start)
        return record
    before = _fingerprint(model)
    stage = "plan"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = slimbench.plan(model, x, ratio=ratio, **(plan_options or {}))
            stage = "prune"
            pruned = slimbench.prune(model, x, plan=plan)
        plan = next((v for v in vars(pruned).values() if isinstance(v, slimbench.PruningPlan)), plan)
        record["notes"] = sorted({" ".join(str(w.message).split())[:300] for w in caught
                                  if str(w.filename).startswith(_SLIMBENCH_DIR)})
        stage = "reference"
        reference = slimbench.zero_bn_channels(model, plan).eval()
    except Exception as exc:
        category = "refused" if _is_refusal(exc) else "CRASH"
        record.update(category=category, reason=f"{stage}: {_reason(exc)}", error=_where(exc))
        record["seconds"] = time.perf_counter() - start
        return record
    try:
        err = _compare(pruned.eval(), reference, x)
    except Exception as exc:
        record.update(category="CRASH", reason=f"pruned model fails to run: {_reason(exc)}", error=_where(exc))
        record["seconds"] = time.perf_counter() - start
        return record
    record["error"] = err
    if _fingerprint(model) != before:
        record.update(category="WRONG", reason="the caller's model was changed")
    elif not err <= 1e-4:
        record.update(category="WRONG", reason=f"pruned outputs differ from the zeroed model by {err:.3g} (relative)")
    else:
        try:
            record["macs_before"], record["macs_after"] = _macs(model, x), _macs(pruned, x)
        except Exception as exc:  # counting failed: fall back on the plan's own MACs
            record["notes"].append(f"thop_ext.profile failed: {_reason(exc)}"[:300])
            record["macs_before"], record["macs_after"] = plan.macs_before, plan.macs_after
        kept = record["macs_after"] / max(record["macs_before"], 1)
        record["kept"] = kept
        record["category"] = "pruned" if 1 - kept >= PRUNED_ENOUGH else "pruned-a-little"
        if record["category"] == "pruned-a-little":
            record["reason"] = "; ".join(record["notes"]) or "no warning given"
    record["seconds"] = time.perf_counter() - start
    return record


def worker_loop() -> None:
    """Reads one JSON case per line on stdin, writes one marked JSON record per line on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # model code that prints must not interleave with the records
    for line in sys.stdin:
        job = json.loads(line)
        record = run_case(Case(**job["case"]), ratio=job["ratio"], max_params=job["max_params"],
                          plan_options=job.get("plan_options"))
        out.write(_MARK + json.dumps(record) + "\n")
        out.flush()
