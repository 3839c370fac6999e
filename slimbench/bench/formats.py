"""Report rows -> terminal table, Markdown, CSV or JSON; and the paper numbers shown beside ours.

A row is a flat dict. JSON keys are stable: ``ROW_KEYS`` always appear, in that order, followed
by one group of latency columns per backend present and the derived columns (reductions, paper).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from slimbench.core.atomic import atomic_write_text

__all__ = ["ROW_KEYS", "FORMATS", "paper_note", "row_backends", "add_derived", "render", "write_atomic"]

# Always present, in this order; then per latency backend (registry order) latency_<b>_ms, iqr_<b>
# (the timing's IQR / median), speedup_<b> and speedup_<b>_iqr; then the other derived columns.
ROW_KEYS = ("model", "method", "ratio", "params", "macs", "flops", "accuracy", "dataset", "untrained")
FORMATS = ("table", "md", "csv", "json")
_LATENCY_KEY = re.compile(r"^latency_(\w+)_ms$")
_PAPER_METHODS = ("unpruned", "network_slimming", "network_slimming+channel-selection")


def paper_note(model: str, method: str, ratio: float) -> str:
    """'2.30M / 3.91e8 FLOPs / err 6.20 % (C10)' when the paper has this model and ratio, else ''.

    The numbers live on the model's ``ModelInfo.paper`` (slimbench.models)."""
    from slimbench.models import model_info

    if method not in _PAPER_METHODS:
        return ""
    try:
        hit = model_info(model, "cifar10").paper_result(ratio)
    except ValueError:  # not a CIFAR zoo model: no paper row
        return ""
    if hit is None:
        return ""
    tag = {"cifar10": "C10", "cifar100": "C100"}.get(hit.dataset, hit.dataset)
    return f"{hit.params / 1e6:.2f}M / {hit.flops:.2e} FLOPs / err {hit.error:.2f} % ({tag})"


def row_backends(rows: Sequence[dict]) -> list[str]:
    """Latency backends with a column in ``rows``: registered ones in registry order, then any other."""
    from slimbench.bench.latency import BACKENDS

    seen = {m.group(1) for row in rows for key in row if (m := _LATENCY_KEY.match(key))}
    return [b for b in BACKENDS if b in seen] + sorted(seen - set(BACKENDS))


def _ratio(new: float | None, old: float | None) -> float | None:
    return None if not new or not old else old / new


def add_derived(rows: Sequence[dict]) -> list[dict]:
    """Reductions and speedups against each model's unpruned row; the paper column.

    A speedup the report already computed from the paired timing rounds (``speedup_<b>``, with
    ``speedup_<b>_iqr``) is kept; otherwise it is the ratio of median latencies, without spread.
    """
    base = {r["model"]: r for r in rows if r["method"] == "unpruned"}
    backends = row_backends(rows)
    out = []
    for row in rows:
        ref = base.get(row["model"], {})
        latency = {}
        for b in backends:
            latency[f"latency_{b}_ms"] = row.get(f"latency_{b}_ms")
            latency[f"iqr_{b}"] = row.get(f"iqr_{b}")
            latency[f"speedup_{b}"] = row.get(f"speedup_{b}", _ratio(row.get(f"latency_{b}_ms"),
                                                                     ref.get(f"latency_{b}_ms")))
            latency[f"speedup_{b}_iqr"] = row.get(f"speedup_{b}_iqr")
        derived = {
            "params_reduction": 1 - row["params"] / ref["params"] if ref else None,
            "macs_reduction": 1 - row["macs"] / ref["macs"] if ref else None,
            "macs_ratio": _ratio(row["macs"], ref.get("macs")),
            "paper": paper_note(row["model"], row["method"], row["ratio"]),
        }
        first = {k: row.get(k, False if k == "untrained" else None) for k in ROW_KEYS}
        out.append({**first, **latency, **derived,
                    **{k: v for k, v in row.items() if k not in first and k not in latency and k not in derived}})
    return out


def _fmt(value, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "count":
        return f"{value / 1e6:.2f}M"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "ms":
        return f"{value:.2f}"
    return str(value)


_FIXED = (("model", "model", ""), ("method", "method", ""), ("ratio", "ratio", ""), ("params", "params", "count"),
          ("macs", "MACs", "count"), ("flops", "FLOPs", "count"), ("macs_reduction", "MACs -", "pct"),
          ("accuracy", "acc", "pct"))


def _label(backend: str) -> str:
    from slimbench.bench.latency import BACKENDS

    return BACKENDS[backend].label if backend in BACKENDS else backend


def _speedup_cell(row: dict, backend: str) -> str:
    value, spread = row.get(f"speedup_{backend}"), row.get(f"speedup_{backend}_iqr")
    if value is None:
        return "-"
    return f"{value:.2f}x" + (f" ({spread:.2f})" if spread is not None else "")


def _table(rows: Sequence[dict], tablefmt: str) -> str:
    headers = [h for _, h, _ in _FIXED]
    body = []
    for r in rows:
        cells = [_fmt(r.get(k), kind) for k, _, kind in _FIXED]
        if r.get("untrained"):
            cells[0] += " [untrained]"
        body.append(cells)
    for b in row_backends(rows):
        headers += [f"{_label(b)} ms", f"{_label(b)} x (IQR)"]
        for r, cells in zip(rows, body, strict=True):
            cells += [_fmt(r.get(f"latency_{b}_ms"), "ms"), _speedup_cell(r, b)]
    if any(r.get("paper") for r in rows):
        headers.append("paper (NS, Table 1)")
        for r, cells in zip(rows, body, strict=True):
            cells.append(r.get("paper") or "")
    return tabulate(body, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def run_line(run: dict | None) -> str:
    """One line naming the machine, versions and commit behind the numbers (table / md footers)."""
    if not run:
        return ""
    env = run.get("environment", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    return (f"run: {env.get('machine', '?')} ({env.get('cpu', '?')}, {env.get('threads', '?')} thread(s)); "
            f"{versions}; commit {env.get('commit') or 'unknown'}"
            + (" (uncommitted changes)" if env.get("dirty") else ""))


def render(rows: Sequence[dict], fmt: str = "table", caption: str = "", run: dict | None = None) -> str:
    """Rows (with derived columns) as text in ``fmt``: table, md, csv or json.

    ``run`` (what produced the numbers: settings and environment) goes into every format: a "run"
    object in JSON, ``# `` comment lines before the CSV header (with the caption), a footer line in
    the table and Markdown.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = add_derived(rows)
    if fmt == "json":
        return json.dumps({"caption": caption, "run": run or {}, "rows": rows}, indent=1) + "\n"
    footer = run_line(run)
    if fmt == "csv":
        buffer = io.StringIO()
        for line in (caption, f"run: {json.dumps(run, sort_keys=True)}" if run else ""):
            if line:
                buffer.write(f"# {line}\n")
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else list(ROW_KEYS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "md":
        return ((f"{caption}\n\n" if caption else "") + _table(rows, "github") + "\n"
                + (f"\n{footer}\n" if footer else ""))
    return (_table(rows, "simple") + (f"\n\n{caption}\n" if caption else "\n")
            + (f"{footer}\n" if footer else ""))


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--output folder {str(path.parent)!r} does not exist; create it first")
    return atomic_write_text(path, text)
