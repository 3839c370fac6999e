"""The wide sweep: prune every torchvision classifier and a wide sample of timm models, and say how each ends.

``python -m slimbench.bench.sweep`` (or ``make sweep``) builds each model without pretrained weights,
gives every BatchNorm a random gamma, asks ``slimbench.prune`` for ``ratio=0.5`` with the project's
defaults, checks the pruned model against ``slimbench.zero_bn_channels(model, plan)`` (the equivalence
contract) and classifies the outcome:

- ``pruned``: verified, >= 20 % of the MACs removed; ``pruned-a-little``: verified, less removed;
- ``refused``: a clear error raised by slimbench itself (its own exception, or a ValueError /
  RuntimeError raised from slimbench's code), with its message as the reason;
- ``WRONG``: the pruned model runs but its outputs differ from the zeroed reference (or the caller's
  model was changed); ``CRASH``: any other exception (IndexError, KeyError, a torch error from deep
  inside, ...) or a pruned model that fails to run; ``TIMEOUT``: over the per-model time limit;
- ``skipped``: the model itself cannot be built or run here (not slimbench's doing), or is larger
  than ``--max-params``.

Each model runs in a worker process (restarted after a timeout or a hard crash), so one model
cannot stop the sweep. Results go to a JSON file and to ``docs/compatibility.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from slimbench.bench.sweep_case import _MARK, CATEGORIES, PRUNED_ENOUGH, Case, run_case, worker_loop

__all__ = ["Case", "CATEGORIES", "torchvision_cases", "timm_cases", "named_cases", "run_case", "run_sweep",
           "render_markdown", "summary_counts", "main"]

# A fixed, quick sample of real models (run in make test): plain, depthwise, concat, shuffle, timm
SAMPLE = (("torchvision", "resnet18"), ("torchvision", "mobilenet_v3_small"), ("torchvision", "shufflenet_v2_x0_5"),
          ("timm", "test_efficientnet"), ("timm", "test_byobnet"))


def torchvision_cases() -> list[Case]:
    """Every torchvision classification model (``torchvision.models`` itself, not detection etc.)."""
    import torchvision

    return [Case("torchvision", n, "torchvision") for n in torchvision.models.list_models(module=torchvision.models)]


def _timm_catalogue(cache: Path | None) -> dict[str, dict]:
    """name -> {family, bn, params} for every timm model, built on the meta device (cached per timm version)."""
    import timm
    import torch
    from timm.models import _registry
    from torch.nn.modules.batchnorm import _BatchNorm

    path = cache / f"timm-{timm.__version__}-catalogue.json" if cache else None
    if path is not None and path.exists():
        return json.loads(path.read_text())
    catalogue = {}
    for name in timm.list_models():
        entry = {"family": _registry._model_to_module.get(name, "?")}
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                model = timm.create_model(name, pretrained=False)
            entry.update(bn=sum(isinstance(m, _BatchNorm) for m in model.modules()),
                         params=sum(p.numel() for p in model.parameters()))
        except Exception as exc:  # a model that cannot be built is left out of the sweep
            entry.update(bn=0, params=0, error=f"{type(exc).__name__}: {exc}"[:200])
        catalogue[name] = entry
    if path is not None:
        from slimbench.core.atomic import atomic_write_text

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(catalogue, indent=0, sort_keys=True))
    return catalogue


def timm_cases(min_total: int = 160, cache: Path | None = None) -> list[Case]:
    """timm models with a BatchNorm: the smallest of every family, then the next smallest, until ``min_total``.

    Variants with the same parameter count as one already taken (other input sizes, tags) are skipped.
    """
    families: dict[str, list[tuple[int, str]]] = {}
    for name, entry in _timm_catalogue(cache).items():
        if entry.get("bn"):
            families.setdefault(entry["family"], []).append((entry["params"], name))
    queues = {}
    for family, models in families.items():
        seen, queue = set(), []
        for params, name in sorted(models):
            if params not in seen:
                seen.add(params)
                queue.append(name)
        queues[family] = queue
    picked: list[Case] = []
    depth = 0
    while len(picked) < min_total and any(len(q) > depth for q in queues.values()):
        picked += [Case("timm", q[depth], f) for f, q in sorted(queues.items()) if len(q) > depth]
        depth += 1
    return picked


def named_cases(names: list[str], timm: bool = True) -> list[Case]:
    """The named models, in the given order: a torchvision classifier by that name, else a timm model
    (its family from timm's registry; an unknown name is then reported as skipped by ``run_case``)."""
    tv = {c.name: c for c in torchvision_cases()}
    cases = []
    for name in filter(None, (n.strip() for n in names)):
        if name in tv:
            cases.append(tv[name])
        elif timm:
            from timm.models import _registry

            cases.append(Case("timm", name, _registry._model_to_module.get(name, "?")))
    return cases



# ---------------------------------------------------------------- the driver

class _Worker:
    """A ``python -m slimbench.bench.sweep --worker`` process; restarted after a timeout or a hard crash."""

    def __init__(self, log: Path | None) -> None:
        self.log = open(log, "a") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in close()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "slimbench.bench.sweep", "--worker"], text=True, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     start_new_session=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)

    def run(self, case: Case, ratio: float, max_params: int, timeout: float,
            plan_options: dict | None = None) -> dict | None:
        """The record, or None on timeout or when the worker died (the caller then restarts it)."""
        self.proc.stdin.write(json.dumps({"case": asdict(case), "ratio": ratio, "max_params": max_params,
                                           "plan_options": plan_options}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.selector.select(left):
                break
            line = self.proc.stdout.readline()
            if not line:
                return None  # the worker died (segfault, out of memory)
            if line.startswith(_MARK):
                return json.loads(line[len(_MARK):])
        return None

    def close(self) -> int | None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.selector.close()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return self.proc.returncode


def run_sweep(cases: list[Case], *, ratio: float = 0.5, timeout: float = 300.0, max_params: int = 400_000_000,
              log: Path | None = None, progress: bool = True, on_record=None,
              plan_options: dict | None = None) -> list[dict]:
    """Run every case in a worker process, one at a time, with ``timeout`` seconds for each.

    ``on_record(records)`` is called after each model (main writes the partial results with it)."""
    from tqdm import tqdm

    records, worker = [], None
    bar = tqdm(cases, desc="sweep", unit="model", file=sys.stderr, disable=not progress)
    try:
        for case in bar:
            bar.set_postfix_str(case.name)
            worker = worker or _Worker(log)
            start = time.perf_counter()
            record = worker.run(case, ratio, max_params, timeout, plan_options)
            if record is None:
                code = worker.close()
                worker = None
                timed_out = code in (None, -9) and time.perf_counter() - start >= timeout
                record = {"model": case.name, "source": case.source, "family": case.family,
                          "category": "TIMEOUT" if timed_out else "CRASH",
                          "reason": f"over {timeout:.0f} s" if timed_out else f"the worker process died (exit {code})",
                          "seconds": time.perf_counter() - start}
            records.append(record)
            if on_record is not None:
                on_record(records)
    finally:
        if worker is not None:
            worker.close()
    return records


def summary_counts(records: list[dict]) -> dict[str, int]:
    counts = Counter(r["category"] for r in records)
    return {c: counts.get(c, 0) for c in CATEGORIES}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(records: list[dict], *, ratio: float = 0.5, meta: dict | None = None) -> str:
    """docs/compatibility.md: summary counts first, then failures grouped by reason, then every model."""
    counts = summary_counts(records)
    ran = [r for r in records if r["category"] != "skipped"]
    bn = [r for r in ran if r.get("has_bn")]
    ok = sum(r["category"] in ("pruned", "pruned-a-little", "refused") for r in ran)
    lines = ["# Compatibility: the wide sweep", "",
             "Generated by `make sweep` (`python -m slimbench.bench.sweep`): every torchvision classification model "
             "and the smallest timm models of every family that has a BatchNorm, no pretrained weights, random BN "
             f"gamma, `slimbench.prune(model, x, ratio={ratio})` with the project's defaults (unless the line "
             "below names plan options), the pruned model checked against `slimbench.zero_bn_channels(model, plan)`. "
             "MACs are `thop_ext.profile` counts at the input "
             "size shown. Categories: see `slimbench/bench/sweep.py`.", ""]
    if meta:
        lines += [", ".join(f"{k}: {v}" for k, v in meta.items()), ""]
    lines += ["| category | models |", "|---|---|", *(f"| {c} | {n} |" for c, n in counts.items()),
              f"| **total** | {len(records)} |", ""]
    if ran:
        lines.append(f"Of the {len(ran)} models that ran: {100 * ok / len(ran):.1f} % pruned (verified) or refused "
                     "with a reason. Of the "
                     f"{len(bn)} with a BatchNorm, {sum(r['category'] == 'pruned' for r in bn)} "
                     f"({100 * sum(r['category'] == 'pruned' for r in bn) / max(len(bn), 1):.1f} %) lost >= "
                     f"{PRUNED_ENOUGH:.0%} of their MACs.")
        lines.append("")
    groups: dict[tuple[str, str], list[str]] = {}
    for r in records:
        if r["category"] not in ("pruned",):
            key = (r["category"], _group_key(r.get("reason", "")))
            groups.setdefault(key, []).append(r["model"])
    if groups:
        lines += ["## Not fully pruned, grouped by reason", "", "| category | models | reason | examples |",
                  "|---|---|---|---|"]
        for (cat, reason), models in sorted(groups.items(), key=lambda kv: (CATEGORIES.index(kv[0][0]),
                                                                            -len(kv[1]))):
            lines.append(f"| {cat} | {len(models)} | {_cell(reason)} | {_cell(', '.join(models[:6]))} |")
        lines.append("")
    lines += ["## Every model", "", "| model | source / family | input | MACs kept | category | reason |",
              "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["source"], r["family"], r["model"])):
        kept = f"{100 * r['kept']:.1f} %" if r.get("kept") is not None else "-"
        size = "x".join(map(str, r["input"])) if r.get("input") else "-"
        where = r["source"] if r["source"] == r["family"] else f"{r['source']} / {r['family']}"
        lines.append(f"| {r['model']} | {where} | {size} | {kept} | {r['category']} | {_cell(r.get('reason', ''))} |")
    return "\n".join(lines) + "\n"


def _group_key(reason: str) -> str:
    """A reason without the parts that name one model (module names, numbers), to group alike failures."""
    import re

    text = re.sub(r"'[^']*'", "'…'", reason)
    text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "N", text)
    return text[:160]


def _source_commit() -> str:
    """The commit of the slimbench source that runs (with "+changes" when the tree differs), or "unknown"."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "slimbench"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slimbench.bench.sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("build/sweep/results.json"), help="results JSON")
    parser.add_argument("--doc", default="docs/compatibility.md", help="markdown table ('' for none)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--residual", choices=("keep", "shared", "select"), default=None,
                        help="plan with this residual mode instead of the default (for comparing defaults)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model")
    parser.add_argument("--max-params", type=int, default=400_000_000, help="skip larger models (0: no limit)")
    parser.add_argument("--min-timm", type=int, default=160, help="at least this many timm models")
    parser.add_argument("--models", default="",
                        help="comma-separated names, run as given (torchvision first, then timm; no catalogue)")
    parser.add_argument("--sample", action="store_true", help="the fixed quick sample only")
    parser.add_argument("--no-timm", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        worker_loop()
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.sample:
        cases = [Case(s, n, s) for s, n in SAMPLE]
    elif args.models:
        cases = named_cases(args.models.split(","), timm=not args.no_timm)
    else:
        cases = torchvision_cases() + ([] if args.no_timm else timm_cases(args.min_timm, cache=args.out.parent))
    from slimbench.core.atomic import atomic_write_text

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    options = {"residual": args.residual} if args.residual else {}
    meta = {"started": started, "commit": _source_commit(), "models": len(cases), "ratio": args.ratio,
            "timeout_s": args.timeout, "plan options": options or "defaults"}

    def write(records: list[dict]) -> None:  # after every model: a partial run still leaves its results
        data = {"meta": {**meta, "done": len(records)}, "summary": summary_counts(records), "records": records}
        atomic_write_text(args.out, json.dumps(data, indent=1))

    records = run_sweep(cases, ratio=args.ratio, timeout=args.timeout, max_params=args.max_params,
                        log=args.out.parent / "worker.log", on_record=write, plan_options=options)
    if args.doc:
        atomic_write_text(Path(args.doc), render_markdown(records, ratio=args.ratio, meta=meta))
    print(json.dumps(summary_counts(records)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
