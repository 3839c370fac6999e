"""Report rows -> terminal table, Markdown, CSV or JSON; and the paper numbers shown beside ours.

A row is a flat dict. JSON keys are stable: ``ROW_KEYS`` always appear, in that order, followed
by the derived columns (reductions, speedups, paper values).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from tabulate import tabulate

from slimbench.core.atomic import atomic_write_text

__all__ = ["ROW_KEYS", "FORMATS", "PAPER", "paper_note", "add_derived", "render", "write_atomic"]

ROW_KEYS = ("model", "method", "ratio", "params", "macs", "flops", "accuracy", "dataset",
            "latency_torch_ms", "latency_ort_ms")
FORMATS = ("table", "md", "csv", "json")

# Network Slimming (Liu et al., ICCV 2017), Table 1, CIFAR-10 ("FLOPs" there ~ 2 x MACs);
# key: (model, pruned fraction of channels; 0 = baseline). Values: params, FLOPs, test error %.
PAPER: dict[tuple[str, float], tuple[float, float, float]] = {
    ("vgg19", 0.0): (20.04e6, 7.97e8, 6.34),
    ("vgg19", 0.7): (2.30e6, 3.91e8, 6.20),
    ("densenet40", 0.0): (1.02e6, 5.33e8, 6.11),
    ("densenet40", 0.4): (0.66e6, 3.81e8, 5.19),
    ("densenet40", 0.7): (0.35e6, 2.40e8, 5.65),
    ("resnet164", 0.0): (1.70e6, 4.99e8, 5.42),
    ("resnet164", 0.4): (1.44e6, 3.81e8, 5.08),
    ("resnet164", 0.6): (1.10e6, 2.75e8, 5.27),
}
_PAPER_METHODS = ("unpruned", "network_slimming", "network_slimming+channel-selection")


def paper_note(model: str, method: str, ratio: float) -> str:
    """'2.30M / 3.91e8 FLOPs / err 6.20 % (C10)' when the paper has this model and ratio, else ''."""
    if method not in _PAPER_METHODS:
        return ""
    hit = PAPER.get((model, round(float(ratio), 2)))
    if hit is None:
        return ""
    params, flops, error = hit
    return f"{params / 1e6:.2f}M / {flops:.2e} FLOPs / err {error:.2f} % (C10)"


def _ratio(new: float | None, old: float | None) -> float | None:
    return None if not new or not old else old / new


def add_derived(rows: Sequence[dict]) -> list[dict]:
    """Reductions and speedups against each model's unpruned row; the paper column."""
    base = {r["model"]: r for r in rows if r["method"] == "unpruned"}
    out = []
    for row in rows:
        ref = base.get(row["model"], {})
        derived = {
            "params_reduction": 1 - row["params"] / ref["params"] if ref else None,
            "macs_reduction": 1 - row["macs"] / ref["macs"] if ref else None,
            "speedup_torch": _ratio(row.get("latency_torch_ms"), ref.get("latency_torch_ms")),
            "speedup_ort": _ratio(row.get("latency_ort_ms"), ref.get("latency_ort_ms")),
            "paper": paper_note(row["model"], row["method"], row["ratio"]),
        }
        out.append({**{k: row.get(k) for k in ROW_KEYS}, **derived,
                    **{k: v for k, v in row.items() if k not in ROW_KEYS and k not in derived}})
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


_DISPLAY = (("model", "model", ""), ("method", "method", ""), ("ratio", "ratio", ""), ("params", "params", "count"),
            ("macs", "MACs", "count"), ("flops", "FLOPs", "count"), ("macs_reduction", "MACs -", "pct"),
            ("accuracy", "acc", "pct"), ("latency_torch_ms", "torch ms", "ms"), ("speedup_torch", "torch x", "x"),
            ("latency_ort_ms", "ort ms", "ms"), ("speedup_ort", "ort x", "x"), ("paper", "paper (NS, Table 1)", ""))


def _table(rows: Sequence[dict], tablefmt: str) -> str:
    shown = [(k, h, kind) for k, h, kind in _DISPLAY if k != "paper" or any(r.get("paper") for r in rows)]
    body = [[_fmt(r.get(k), kind) for k, _, kind in shown] for r in rows]
    return tabulate(body, headers=[h for _, h, _ in shown], tablefmt=tablefmt, disable_numparse=True)


def render(rows: Sequence[dict], fmt: str = "table", caption: str = "") -> str:
    """Rows (with derived columns) as text in ``fmt``: table, md, csv or json."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")
    rows = add_derived(rows)
    if fmt == "json":
        return json.dumps({"caption": caption, "rows": rows}, indent=1) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else list(ROW_KEYS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "md":
        return (f"{caption}\n\n" if caption else "") + _table(rows, "github") + "\n"
    return _table(rows, "simple") + (f"\n\n{caption}\n" if caption else "\n")


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--output folder {str(path.parent)!r} does not exist; create it first")
    return atomic_write_text(path, text)
