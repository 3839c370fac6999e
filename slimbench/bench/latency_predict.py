"""Whole-model latency predicted from a latency table: the sum of per-conv costs, scaled and offset.

A conv's cost is its table cost. The default tables time each conv among copies of itself whose weights
outgrow the cache (``latency_table``), so that cost includes reading the weights from memory, as the
whole model does on each inference. A table whose ``runner_factory`` timed layers alone (their weights
stayed in the cache) can carry a memory bandwidth; its entries are then charged ``weight bytes /
bandwidth`` on top (``latency.weight_bandwidth`` measures one the backend's own way).

Why it matters: timed alone, vgg19's late 2x2 and 4x4 convs of pruned variants ran 1.5-5x their table
cost in the whole model, the excess being their weight bytes at 14-16 GB/s. ``scale`` and ``constant``
absorb what the tables cannot see (layout conversions between layers, residual adds, pooling, each
node's dispatch): ``LatencyModel.calibrate`` fits them on whole-model runs
(``slimbench.pruning.latency_model``).
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
    cost, plus its weight bytes over the table's weight bandwidth (``LatencyTable.bandwidth_gb_s``) where
    the table timed it alone (an entry without ``weights_read``)."""

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
        if bandwidth and not self.table.entries[spec.key].get("weights_read"):
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
