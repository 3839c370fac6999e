"""Whole-model latency predicted from a latency table: per-conv compute plus the weights' memory reads.

A conv's cost in the whole model is ``table cost (cin, cout) + weight bytes / weight bandwidth``.

Why the second term. The table times each conv alone, back to back, so its weights stay in the
core's cache; in the whole model every layer's weights are read again on each inference, from memory
once the model's weights outgrow the caches. Measured on vgg19 (CIFAR, onnxruntime, 1 thread): the
late 2x2 and 4x4 convs of pruned variants ran 1.5-5x their table cost in the whole model, and the
excess was their weight bytes at 14-16 GB/s in every variant, down to 7 MB of weights in all (below
the 32 MiB L3: on this shared machine weights read once per inference do not stay in it).

``latency.weight_bandwidth`` measures that rate the backend's own way: a chain of 512->512 3x3 convs at 2x2
whose weights are twice the last-level cache, timed interleaved with one such conv alone; the
difference per layer is the time to read one layer's weights. It is measured when the table is built
(``latency_table.build_table``) and cached with it. ``scale`` and ``constant`` absorb what a one-layer
model cannot see (layout reorders at the model's edges, residual adds, pooling, the classifier):
``LatencyModel.calibrate`` fits them on whole-model runs (``slimbench.pruning.latency_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slimbench.analysis.graph import ChannelGraph
from slimbench.bench.latency_table import LatencyTable, LayerSpec

__all__ = ["LatencyModel"]


@dataclass
class LatencyModel:
    """Whole-model latency (ms): ``scale * sum(conv costs) + constant``, a conv's cost being its table
    cost plus its weight bytes over the table's weight bandwidth (``LatencyTable.bandwidth_gb_s``)."""

    table: LatencyTable
    graph: ChannelGraph
    specs: dict[str, LayerSpec]
    scale: float = 1.0
    constant: float = 0.0
    reference_ms: float | None = None  # measured latency of the unpruned model, when calibrated
    measure_fn: Callable[[object], float] | None = None  # PruningPlan -> measured pruned / unpruned latency

    def conv_cost(self, name: str, cin: int, cout: int) -> float:
        """One conv's cost (ms, before scale) at ``cin`` input and ``cout`` output channels kept."""
        spec = self.specs[name]
        cost = self.table.cost(spec, cin, cout)
        bandwidth = self.table.bandwidth_gb_s
        if bandwidth:
            cost += spec.weight_bytes(cin, cout) / (bandwidth * 1e6)  # GB/s = 1e6 bytes per ms
        return cost

    def widths(self, name: str, keep_gid: np.ndarray) -> tuple[int, int]:
        """(cin, cout) of conv ``name`` under a keep mask over channel ids (at least 1 each)."""
        spec, rec = self.specs[name], self.graph.convs[name]
        cout = max(int(keep_gid[rec.out_gids].sum()), 1) if rec.out_gids is not None else spec.out_channels
        if spec.depthwise:
            return cout, cout
        cin = max(int(keep_gid[rec.in_gids].sum()), 1) if rec.in_gids is not None else spec.in_channels
        return cin, cout

    def layer_sum(self, keep_gid: np.ndarray | None = None, removed: frozenset[str] = frozenset(),
                  names: list[str] | None = None) -> float:
        """Sum of conv costs (``names``: only those convs; ``removed``: convs the plan deletes)."""
        keep = np.ones(self.graph.n_gids, dtype=bool) if keep_gid is None else keep_gid
        return sum(self.conv_cost(name, *self.widths(name, keep)) for name in (self.specs if names is None else names)
                   if name not in removed)

    def predict(self, keep_gid: np.ndarray | None = None, removed: frozenset[str] = frozenset()) -> float:
        return self.scale * self.layer_sum(keep_gid, removed) + self.constant

    def calibrate(self, points: list[tuple[float, float]]) -> LatencyModel:
        """Fit scale and constant to ``[(layer_sum, measured ms), ...]`` (one point: constant only)."""
        sums, measured = (np.asarray(v, dtype=float) for v in zip(*points, strict=True))
        if len(points) >= 2 and np.ptp(sums) > 0:
            scale, constant = np.polyfit(sums, measured, 1)
            if scale > 0:
                self.scale, self.constant = float(scale), float(constant)
                return self
        self.scale, self.constant = 1.0, float(np.mean(measured - sums))
        return self
