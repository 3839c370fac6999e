"""The report's figure: accuracy vs MACs, speedup vs pruned ratio (one line per variant and latency
backend, with IQR error bars, y = 1 and the ideal MACs ratio), and the |gamma| histogram with the
network-slimming threshold at each ratio, which users look at to judge whether sparse training
separated the channels. The data set and the training behind the numbers are written under it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from slimbench.core.atomic import atomic_path

__all__ = ["build_figure", "plot_report"]

_MARKERS = "osD^v<>pPX*h"
_LINESTYLES = ("-", "--", ":", "-.")


def _series(rows: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    series: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        series.setdefault((row["model"], row["method"]), []).append(row)
    return {k: sorted(v, key=lambda r: r["ratio"]) for k, v in series.items()}


def _accuracy_panel(ax, series, colors, dataset: str) -> None:
    for i, ((model, method), group) in enumerate(series.items()):
        points = [(r["macs"] / 1e6, 100 * r["accuracy"]) for r in group if r.get("accuracy") is not None]
        if points:  # hollow markers, shrinking per series, so that equal points stay visible one in another
            ax.plot(*zip(*points, strict=True), marker=_MARKERS[i % len(_MARKERS)], color=colors[i],
                    markersize=max(4.0, 11.0 - 1.5 * i), markerfacecolor="none", markeredgewidth=1.5,
                    linestyle="none" if method == "unpruned" else _LINESTYLES[i % len(_LINESTYLES)],
                    label=f"{model} {method}", alpha=0.85)
    ax.set(xlabel="MACs per image (M)", ylabel=f"top-1 accuracy, {dataset} test split (%)",
           title="accuracy vs MACs")


def _speedup_panel(ax, series, colors, backends: Sequence[str], labels: Mapping[str, str]) -> None:
    pruned = [(i, key, group) for i, (key, group) in enumerate(series.items()) if key[1] != "unpruned"]
    lanes = max(1, len(pruned) * len(backends))
    lane = 0
    for b_index, backend in enumerate(backends):
        for i, (model, method), group in pruned:
            points = [r for r in group if r.get(f"speedup_{backend}") is not None]
            if points:  # each line gets its own small x offset so that none hides another
                offset = (lane - (lanes - 1) / 2) * 0.012
                ax.errorbar([r["ratio"] + offset for r in points], [r[f"speedup_{backend}"] for r in points],
                            yerr=[(r.get(f"speedup_{backend}_iqr") or 0.0) / 2 for r in points],
                            marker=_MARKERS[i % len(_MARKERS)], color=colors[i], capsize=2, alpha=0.85,
                            linestyle=_LINESTYLES[b_index % len(_LINESTYLES)],
                            label=f"{model} {method} ({labels.get(backend, backend)})")
            lane += 1
    for i, (_model, _method), group in pruned:
        ideal = [(r["ratio"], r["macs_ratio"]) for r in group if r.get("macs_ratio")]
        if ideal:
            ax.plot(*zip(*ideal, strict=True), color=colors[i], marker="_", markersize=16, markeredgewidth=2,
                    linestyle="none", alpha=0.6)
    ax.plot([], [], color="gray", marker="_", markersize=16, markeredgewidth=2, linestyle="none",
            label="ideal = MACs ratio")
    ax.axhline(1.0, color="black", linewidth=0.8, label="y = 1 (no speedup)")
    ax.set(xlabel="pruned channel ratio", ylabel="speedup vs unpruned (x; bars: IQR)",
           title="speedup vs pruned ratio")


def _gamma_panel(ax, gammas: Mapping[str, np.ndarray], thresholds: Mapping[str, Mapping[float, float]]) -> None:
    # log-spaced |gamma|: sparse training pushes most channels decades below the rest, where the
    # thresholds lie; on a linear axis they would all sit at 0
    values_all = np.concatenate([np.abs(v) for v in gammas.values()]) if gammas else np.ones(1)
    positive = values_all[values_all > 0]
    low = max(float(positive.min()) if positive.size else 1e-6, 1e-8)
    bins = np.logspace(np.log10(low), np.log10(max(float(values_all.max()), low) * 1.05), 60)
    for m_index, (model, values) in enumerate(gammas.items()):
        color = f"C{m_index}"
        ax.hist(np.clip(np.abs(values), low, None), bins=bins, alpha=0.6, color=color,
                label=f"{model} ({values.size} channels)")
        for t_index, (ratio, threshold) in enumerate(sorted(thresholds.get(model, {}).items())):
            ax.axvline(threshold, color=color, linestyle=_LINESTYLES[t_index % len(_LINESTYLES)], linewidth=1,
                       label=f"{model} threshold at ratio {ratio:g}: {threshold:.3g}")
    ax.set(xlabel="|gamma| (BN scaling factor, log scale)", ylabel="channels (log scale)",
           title="BN |gamma| and network-slimming thresholds", xscale="log", yscale="log")


def build_figure(rows: Sequence[dict], gammas: Mapping[str, np.ndarray], *,
                 thresholds: Mapping[str, Mapping[float, float]] | None = None, caption: str = ""):
    """The three-panel matplotlib Figure (Agg). ``rows`` carry derived columns (``formats.add_derived``);
    ``thresholds``: model -> ratio -> network slimming's |gamma| threshold; ``caption``: the data set
    and training, written under the panels. Close it with ``matplotlib.pyplot.close(fig)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slimbench.bench.formats import row_backends
    from slimbench.bench.latency import BACKENDS

    series = _series(rows)
    colors = [f"C{i % 10}" for i in range(len(series))]
    fig, (ax_acc, ax_speed, ax_gamma) = plt.subplots(1, 3, figsize=(17, 5.4))
    datasets = sorted({str(r.get("dataset")) for r in rows})
    _accuracy_panel(ax_acc, series, colors, "/".join(datasets))
    backends = row_backends(rows)
    _speedup_panel(ax_speed, series, colors, backends, {b: BACKENDS[b].label for b in backends if b in BACKENDS})
    _gamma_panel(ax_gamma, gammas, thresholds or {})
    for ax in (ax_acc, ax_speed, ax_gamma):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if caption else 0, 1, 1))
    return fig


def plot_report(rows: Sequence[dict], gammas: Mapping[str, np.ndarray], path: str | os.PathLike, *,
                thresholds: Mapping[str, Mapping[float, float]] | None = None, caption: str = "") -> Path:
    """Save :func:`build_figure` to ``path`` (PNG), atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--plot folder {str(path.parent)!r} does not exist; create it first")
    fig = build_figure(rows, gammas, thresholds=thresholds, caption=caption)
    import matplotlib.pyplot as plt  # after build_figure chose the Agg backend
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return path
