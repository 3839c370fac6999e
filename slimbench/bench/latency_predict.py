"""Whole-model latency predicted from a latency table: the sum of per-conv costs, scaled and offset.

A conv's cost is its table cost. The default tables time each conv among copies of itself whose weights
outgrow the cache (``latency_table``), so that cost includes reading the weights from memory, as the
whole model does on each inference. A table whose ``runner_factory`` timed layers alone (their weights
stayed in the cache) can carry a memory bandwidth; its entries are then charged ``weight bytes /
bandwidth`` on top (``latency.weight_bandwidth`` measures one the backend's own way).

Why it matters: timed alone, vgg19's late 2x2 and 4x4 convs of pruned variants ran 1.5-5x their table
cost in the whole model, the excess being their weight bytes at 14-16 GB/s.

The converse: a model whose weights fit in the last-level cache keeps them there from one inference to
the next, and a conv timed among copies (weights from memory) then costs less in it. vgg19 pruned
uniformly to 7.4 MB of weights on blocked widths ran in 0.72 ms where its table costs summed to 1.08.
The whole model is therefore priced with a residency: 1 when its conv weights fill at most
``RESIDENT_ALL`` of the cache, 0 from ``RESIDENT_NONE`` on, linear between; a conv on the blocked kernels
(``latency_curves.blocked``) then sheds that share of its weight read time, at most ``1 - HOT_FLOOR`` of
its cost. Convs on the unblocked kernels (a misaligned input) are compute-bound and shed nothing
(vgg19's misaligned uniform plan at 6.9 MB ran at its table sum). The three constants were chosen on
five zoo models x 14 plans, seven held out (largest held-out miss over the five 12.4 -> 10.2 %; README,
"Predictor").

Which kernel a misaligned input gets. onnxruntime runs a plain conv whose kept input width is not a
multiple of 4 (and at least one block) on its unblocked kernel, which the table's misaligned input
samples time. Profiled per node (onnxruntime 1.32, 1 thread), such 3x3 convs ran at those samples in
vgg19 (3.95 ms against 3.98 read on them and 4.66 at the block, network slimming 0.3), resnet56
(8-11 % above them, 24-34 % above the block) and resnet50 (6-11 % under them, 9-18 % above the block),
so they are read there (``unblocked_input``); 1x1 convs (mobilenet_v2, resnet50) ran 5-25 % under
those samples and within 17 % of the block either way, and convs whose input is a concatenation
(densenet40) at about their block, so both keep the block reading. On five zoo models x 19 plans
timed interleaved, this took the largest miss from 17.9 to 11.1 % (vgg19's from 17.9 to 8.2).

``scale`` and ``constant`` absorb what the tables cannot see (layout conversions between layers,
residual adds, pooling, each node's dispatch): ``LatencyModel.calibrate`` fits them on whole-model
runs (``slimbench.pruning.latency_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from slimbench.analysis.graph import ChannelGraph
from slimbench.bench.latency_curves import blocked
from slimbench.bench.latency_table import LatencyTable, LayerSpec

__all__ = ["LatencyModel", "RESIDENT_ALL", "RESIDENT_NONE", "HOT_FLOOR"]

RESIDENT_ALL = 0.25  # conv weights up to this fraction of the last-level cache stay in it between inferences
RESIDENT_NONE = 0.75  # from this fraction on they are streamed from memory, as the table timed them
HOT_FLOOR = 0.4  # a cache-resident conv still costs at least this fraction of its table cost


@dataclass
class LatencyModel:
    """Whole-model latency (ms): ``scale * sum(conv costs) + constant``, a conv's cost being its table
    cost, plus its weight bytes over the table's weight bandwidth (``LatencyTable.bandwidth_gb_s``) where
    the table timed it alone (an entry without ``weights_read``), less the part of that read the cache
    saves a whole model small enough to keep its weights there (:meth:`residency`)."""

    table: LatencyTable
    graph: ChannelGraph
    specs: dict[str, LayerSpec]
    scale: float = 1.0
    constant: float = 0.0
    reference_ms: float | None = None  # measured latency of the unpruned model, when calibrated
    measure_fn: Callable[[object], float] | None = None  # PruningPlan -> measured pruned / unpruned latency
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)  # model -> (layer sum, measured ms)

    def conv_cost(self, name: str, cin: int, cout: int, resident: float = 0.0) -> float:
        """One conv's cost (ms, before scale) at ``cin`` input and ``cout`` output channels kept, in a
        model whose weights are ``resident`` (0..1, :meth:`residency`) in the cache."""
        spec = self.specs[name]
        step = self.table.entries[spec.key]["step"]
        on_blocks = blocked(spec.depthwise, cin, cout, spec.in_channels, spec.out_channels, step)
        unblocked_input = not (on_blocks or spec.depthwise or spec.kernel == (1, 1) or name in self.concatenated_inputs)
        cost = self.table.cost(spec, cin, cout, unblocked_input)
        bandwidth = self.table.bandwidth_gb_s
        if not bandwidth:
            return cost
        read = spec.weight_bytes(cin, cout) / (bandwidth * 1e6)  # GB/s = 1e6 bytes per ms
        if not self.table.entries[spec.key].get("weights_read"):
            return cost + read
        if resident > 0 and on_blocks:
            cost -= resident * min(read, (1 - HOT_FLOOR) * cost)
        return cost

    @cached_property
    def concatenated_inputs(self) -> frozenset[str]:
        """The timed convs whose input joins parts of several sources (other convs' outputs, the model's
        input): a concatenation, as in a DenseNet. A residual add's output is one source, whole."""
        sources: dict[int, str] = {}
        for name in self.specs:
            rec = self.graph.convs[name]
            if rec.out_gids is not None:
                for gid in np.unique(rec.out_gids).tolist():
                    sources.setdefault(gid, name)
        found = set()
        for name in self.specs:
            rec = self.graph.convs[name]
            if rec.in_gids is None or self.specs[name].depthwise:
                continue
            parts = {sources.get(gid, "") for gid in np.unique(rec.in_gids).tolist()}
            if len(parts) > 1:
                found.add(name)
        return frozenset(found)

    def weight_bytes(self, keep_gid: np.ndarray | None = None, removed: frozenset[str] = frozenset()) -> int:
        """float32 weight bytes of the timed convs under a keep mask (what one inference reads)."""
        return self._weight_bytes(self._kept_widths(keep_gid, removed, self.specs))

    def _kept_widths(self, keep_gid: np.ndarray | None, removed: frozenset[str], names) -> dict[str, tuple[int, int]]:
        keep = np.ones(self.graph.n_gids, dtype=bool) if keep_gid is None else keep_gid
        return {name: self.widths(name, keep) for name in names if name not in removed}

    def _weight_bytes(self, widths: dict[str, tuple[int, int]]) -> int:
        return sum(self.specs[name].weight_bytes(*w) for name, w in widths.items())

    def residency(self, weight_bytes: float) -> float:
        """Share of weight reads a model with ``weight_bytes`` of conv weights serves from the cache:
        1 up to ``RESIDENT_ALL`` of the table's last-level cache, 0 from ``RESIDENT_NONE``, linear
        between; 0 when the table has no cache size or no bandwidth."""
        cache = self.table.cache_bytes
        if not cache or not self.table.bandwidth_gb_s:
            return 0.0
        low, high = RESIDENT_ALL * cache, RESIDENT_NONE * cache
        return float(np.clip((high - weight_bytes) / (high - low), 0.0, 1.0))

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
        """Sum of conv costs (``removed``: convs the plan deletes). The whole model is priced with its
        weights' cache residency; ``names`` (only those convs, as the widths search compares one
        layer's steps) at the table's costs, weights streamed from memory."""
        widths = self._kept_widths(keep_gid, removed, self.specs if names is None else names)
        resident = 0.0 if names is not None else self.residency(self._weight_bytes(widths))
        return sum(self.conv_cost(name, *w, resident) for name, w in widths.items())

    def predict(self, keep_gid: np.ndarray | None = None, removed: frozenset[str] = frozenset()) -> float:
        return self.scale * self.layer_sum(keep_gid, removed) + self.constant

    def calibrate(self, points: list[tuple[float, float]]) -> LatencyModel:
        """Fit scale and constant to ``[(layer_sum, measured ms), ...]`` (one point: constant only),
        minimising the *relative* errors: the calibration plans span 0.01-1x the unpruned latency, and an
        absolute fit let the largest decide the constant, which then mispriced the smallest (README,
        "Predictor")."""
        sums, measured = (np.asarray(v, dtype=float) for v in zip(*points, strict=True))
        if len(points) >= 2 and np.ptp(sums) > 0:
            design = np.stack([sums / measured, 1 / measured], axis=1)
            scale, constant = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)[0]
            if scale > 0:
                self.scale, self.constant = float(scale), float(constant)
                return self
        self.scale, self.constant = 1.0, float(np.mean(measured - sums))
        return self
