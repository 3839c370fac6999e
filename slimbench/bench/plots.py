"""The report's figure: MACs vs accuracy, latency speedup vs ratio, and the |gamma| histogram
network-slimming users look at to judge whether sparse training separated the channels."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from slimbench.core.atomic import atomic_path

__all__ = ["plot_report"]


def plot_report(rows: Sequence[dict], gammas: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Save the three-panel figure to ``path`` (PNG), atomically. ``rows`` carry derived columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--plot folder {str(path.parent)!r} does not exist; create it first")
    fig, (ax_acc, ax_lat, ax_gamma) = plt.subplots(1, 3, figsize=(15, 4.2))
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["model"], row["method"]), []).append(row)
    for (model, method), group in series.items():
        group = sorted(group, key=lambda r: r["ratio"])
        label = f"{model} {method}"
        if any(r["accuracy"] is not None for r in group):
            ax_acc.plot([r["macs"] / 1e6 for r in group], [100 * (r["accuracy"] or 0) for r in group],
                        "o" if method == "unpruned" else "o-", label=label)
        if method != "unpruned":
            for backend, style in (("ort", "-"), ("torch", "--")):
                points = [(r["ratio"], r.get(f"speedup_{backend}")) for r in group if r.get(f"speedup_{backend}")]
                if points:
                    ax_lat.plot(*zip(*points, strict=True), "o" + style, label=f"{label} ({backend})")
    ax_acc.set(xlabel="MACs (M)", ylabel="top-1 accuracy (%)", title="MACs vs accuracy")
    ax_lat.set(xlabel="pruned channel ratio", ylabel="speedup vs unpruned (x)", title="latency vs ratio")
    for model, values in gammas.items():
        ax_gamma.hist(np.abs(values), bins=60, alpha=0.6, label=model)
    ax_gamma.set(xlabel="|gamma|", ylabel="channels", title="BN scaling factors", yscale="log")
    for ax in (ax_acc, ax_lat, ax_gamma):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
