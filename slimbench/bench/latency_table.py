"""Per-layer latency tables: what each conv costs at a kept width, measured and cached.

How one layer is timed. Each conv (``nn.Conv2d``) is timed among *copies of itself*: up to
``COPIES_MAX`` convs of the layer's shape, each with its own weights and BN, all reading one input at the
layer's real shape, batch size and thread count, their outputs summed (each add fused into its conv),
exported and run through the harness's own ``make_runner`` and interleaved ``measure``; the model's
time over the copies is the layer's cost. Why not one layer alone: it keeps its weights in the cache
between runs, and pays the backend's layout conversions at the model's input and output as its own;
inside a model, weights come from memory once the model outgrows the cache, and a layer between blocked
layers converts nothing. Copies whose weights outgrow the last-level cache, sharing one conversion at
each end, are both. Measured on seven of vgg19's conv shapes (onnxruntime, 1 thread): per copy, within
+1 to +7 % of each conv's time in the whole model's profile (the sums' reads), where the layer alone
was 39 % (512->512 at 4x4) to 72 % (384->384 at 2x2) under it. Copies: enough that their weights pass
the last-level cache, at most ``COPIES_MAX`` and ``COPIES_MACS`` in all, at least two. (A chain
cin -> cout -> cin was tried first: it mixes a layer's input and output curves. The whole model with
one layer's width changed costs a whole-model export per point.) Same-shape layers share one entry.

What is sampled. Backends work on channel blocks, so latency is a staircase in the kept widths. A
probe first times the widest conv at every multiple of 4 output channels (up to 64) and picks the
widest block (16, 8 or 4) at whose ends the cost jumps; every conv is then timed at the ends of those
blocks, every 4 channels inside the first block and at its full width, and at 3 and each end - 1
(misaligned widths run other kernels), once along its output channels (input full) and once along its
input (output full), plus one corner sample (both widths at their smallest aligned) for the floor
that small spatial maps need. How the samples are read: ``latency_curves``. Depthwise convs have one
curve (in = out = groups).

Each point is the fastest of its interleaved samples (at least 15, each a mean over about 1 ms of
back-to-back runs): on a loaded machine other processes only ever add time, so the minimum is the
stable estimate of a layer's own cost (whole-model comparisons keep the harness's medians).

Tables are cached as JSON under ``cache_dir`` keyed by backend, its version, the CPU model and the
thread count (entries by layer shape and batch): a second build is a file read, and any change of
those keys builds a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from slimbench.analysis.graph import ChannelGraph
from slimbench.bench.latency import (
    cpu_model,
    get_backend,
    last_level_cache_bytes,
    make_runner,
    measure,
    weight_bandwidth,
)
from slimbench.bench.latency_curves import PROBE_STEP, aligned, conv_cost, detect_step, grid, step_ends
from slimbench.core.atomic import atomic_write_text

__all__ = ["fastest", "LayerSpec", "LatencyTable", "layer_specs", "build_table", "table_key", "step_ends",
           "default_cache_dir"]

FORMAT = "slimbench.latency-table/6"  # /4: timed among copies; /5: misaligned outputs; /6: and inputs
COPIES_MAX = 8  # copies of a conv in one timed model, at most
COPIES_MACS = 160_000_000  # multiply-accumulates of one timed model, at most (a run stays a few ms)
CHUNK = 24  # runners timed together (interleaved) while a table is built
Factory = Callable[["LayerSpec", int, int], Callable[[], object]]


def fastest(timing) -> float:
    """The fastest sample of a ``Timing`` (ms): what the latency model measures with. On a shared CPU
    other processes only ever add time, so on a loaded machine the minimum is far steadier than the
    median (the report and the suites' speedups keep the harness's medians, and say their IQR)."""
    return float(min(timing.samples_ms))


@dataclass(frozen=True)
class LayerSpec:
    """The shape of one timed conv: enough to rebuild it at any kept width."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    depthwise: bool
    height: int
    width: int
    batch: int = 1

    @property
    def key(self) -> str:
        k, s, p, d = (f"{a}x{b}" for a, b in (self.kernel, self.stride, self.padding, self.dilation))
        kind = "dw" if self.depthwise else "conv"
        return (f"{kind}{self.in_channels}-{self.out_channels}k{k}s{s}p{p}d{d}"
                f"@{self.batch}x{self.height}x{self.width}")

    def copies(self, cin: int, cout: int, cache_bytes: int) -> int:
        """How many copies of the conv at these widths one timed model holds: enough that their weights
        outgrow the cache (``cache_bytes``: the last-level cache), at most ``COPIES_MAX`` and at most
        ``COPIES_MACS`` multiply-accumulates in all, and at least 2."""
        by_bytes = -(-cache_bytes // max(self.weight_bytes(cin, cout), 1))
        by_macs = COPIES_MACS // max(self.macs(cin, cout), 1)
        return int(max(min(by_bytes, by_macs, COPIES_MAX), 2))

    def macs(self, cin: int, cout: int) -> int:
        out_h = (self.height + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        out_w = (self.width + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return self.weight_bytes(cin, cout) // 4 * out_h * out_w * self.batch

    def module(self, cin: int, cout: int, copies: int = 1) -> nn.Module:
        """conv + BN + ReLU at these widths; ``copies > 1``: that many such convs, each with its own
        weights, all reading the one input, their outputs summed (``_Copies``)."""
        groups = cout if self.depthwise else 1
        convs = [nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, groups, bias=False)
                 for _ in range(copies)]
        if copies == 1:
            return nn.Sequential(convs[0], nn.BatchNorm2d(cout), nn.ReLU()).eval()
        return _Copies(convs, [nn.BatchNorm2d(cout) for _ in convs]).eval()

    def weight_bytes(self, cin: int, cout: int) -> int:
        """float32 weight bytes at these widths (what the whole model reads per inference)."""
        per_output = 1 if self.depthwise else cin
        return 4 * cout * per_output * self.kernel[0] * self.kernel[1]

    def inputs(self, cin: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(self.batch, cin, self.height, self.width),)


class _Copies(nn.Module):
    """``relu(bn_k(conv_k(x)) + relu(... + relu(bn_1(conv_1(x)))))``: copies of one conv that share
    their input, so any conv (strided too) has copies; backends fuse each add into its conv."""

    def __init__(self, convs: list[nn.Conv2d], norms: list[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for conv, norm in zip(self.convs, self.norms, strict=True):
            out = norm(conv(x))
            total = torch.relu(out if total is None else total + out)
        return total


def layer_specs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], graph: ChannelGraph
                ) -> dict[str, LayerSpec]:
    """layer name -> LayerSpec for every plain or depthwise ``nn.Conv2d`` the graph records, and every
    ``nn.Linear`` on a (batch, features) input, timed as the 1x1 conv on a 1x1 map it equals (a
    classifier's weights are as many bytes as a mid-size conv's: mobilenet_v2's ran 0.24 ms of 7.2 at
    full width and 0.05 ms pruned). Other groupings and everything else are left to the calibration."""
    modules = dict(model.named_modules())
    wanted = {n: modules[n] for n in graph.convs if isinstance(modules.get(n), (nn.Conv2d, nn.Linear))}
    shapes: dict[str, tuple[int, ...]] = {}
    def record(name: str):
        def hook(_module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in wanted.items()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.training = training
    specs = {}
    for name, conv in wanted.items():
        if isinstance(conv, nn.Linear):
            if len(shapes.get(name, ())) == 2:
                specs[name] = LayerSpec(conv.in_features, conv.out_features, (1, 1), (1, 1), (0, 0), (1, 1), False,
                                        1, 1, shapes[name][0])
            continue
        depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
        if (conv.groups > 1 and not depthwise) or name not in shapes or len(shapes[name]) != 4:
            continue
        batch, _, height, width = shapes[name]
        specs[name] = LayerSpec(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride),
                                tuple(conv.padding) if not isinstance(conv.padding, str) else (0, 0),
                                tuple(conv.dilation), depthwise, height, width, batch)
    return specs


def table_key(backend: str, threads: int, version: str | None = None, cpu: str | None = None) -> dict:
    return {"backend": backend, "version": version or get_backend(backend).version() or "unknown",
            "cpu": cpu or cpu_model(),
            "threads": int(threads)}


def default_cache_dir() -> Path:
    return Path(os.environ.get("SLIMBENCH_CACHE", Path.home() / ".cache" / "slimbench")) / "latency"


@dataclass
class LatencyTable:
    """Measured curves per layer shape (ms): ``{spec key: {"step", "out": [[w, ms]], "in": [[w, ms]]}}``."""

    key: dict
    entries: dict[str, dict] = field(default_factory=dict)
    bandwidth_gb_s: float | None = None  # conv weights read from memory (latency_predict); None or 0: no such term
    cache_bytes: int | None = None  # the last-level cache of the machine that timed it (latency_predict)
    build_seconds: float = 0.0
    measured_points: int = 0
    cached_shapes: int = 0  # layer shapes of the last build_table read from the cache (the rest were measured)

    def cost(self, spec: LayerSpec, cin: int, cout: int, unblocked_input: bool = False) -> float:
        """The conv's cost (ms) at ``cin`` / ``cout`` kept (``latency_curves.conv_cost``)."""
        return conv_cost(self.entries[spec.key], spec.depthwise, cin, cout, spec.in_channels, spec.out_channels,
                         unblocked_input)

    def ends(self, spec: LayerSpec, axis: str = "out", tol: float = 0.03) -> list[int]:
        widths, costs = zip(*self.entries[spec.key][axis], strict=True)
        return step_ends(list(widths), list(costs), tol)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "key": self.key, "entries": self.entries, "bandwidth_gb_s": self.bandwidth_gb_s,
                "cache_bytes": self.cache_bytes}

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a slimbench latency table (format {data.get('format')!r})")
        return cls(data["key"], data["entries"], data.get("bandwidth_gb_s"), data.get("cache_bytes"))


def _cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha1((FORMAT + json.dumps(key, sort_keys=True)).encode()).hexdigest()[:16]
    return cache_dir / f"{key['backend']}-{key['threads']}t-{digest}.json"


def build_table(specs: Mapping[str, LayerSpec] | list[LayerSpec], *, backend: str = "ort", threads: int = 1,
                cache_dir: str | os.PathLike | None = None, runner_factory: Factory | None = None,
                clock: Callable[[], float] = time.perf_counter, key: dict | None = None, tol: float = 0.03,
                progress: bool = True, bandwidth_gb_s: float | None = None, **measure_options) -> LatencyTable:
    """Measure (or read from the cache) the curves of every layer shape in ``specs``.

    ``runner_factory(spec, cin, cout)`` returns the zero-argument runner timed for that width (default:
    ``make_runner(backend, spec.module(cin, cout, copies), spec.inputs(cin), threads=threads)``, copies
    from ``LayerSpec.copies``, the time divided by them); ``clock`` is passed to ``measure`` (tests
    inject simulated time). ``cache_dir=None``: ``default_cache_dir()``; ``cache_dir=False``: no cache.
    ``key``: the cache key (default ``table_key(backend, threads)``).
    ``bandwidth_gb_s``: the rate at which ``backend`` reads conv weights from memory. The predictor
    charges it on layers a ``runner_factory`` timed alone, and refunds it to blocked layers of a model
    small enough to keep its weights in the cache (``latency_predict``). The default runners time each
    conv among copies of itself, which read their weights from memory as a large model does. Default:
    the cached table's, else measured once with ``latency.weight_bandwidth`` (default runners; about
    2 s) or none (a ``runner_factory``). The table also records the last-level cache's size.
    """
    started = time.perf_counter()
    key = key or table_key(backend, threads)
    unique = {s.key: s for s in (specs.values() if isinstance(specs, Mapping) else specs)}
    path = None
    table = LatencyTable(key)
    if cache_dir is not False:
        path = _cache_path(Path(cache_dir) if cache_dir else default_cache_dir(), key)
        if path.is_file():
            cached = LatencyTable.load(path)
            if cached.key == key:
                table.entries.update(cached.entries)
                table.bandwidth_gb_s, table.cache_bytes = cached.bandwidth_gb_s, cached.cache_bytes
    changed = bandwidth_gb_s is not None and bandwidth_gb_s != table.bandwidth_gb_s
    if bandwidth_gb_s is not None:
        table.bandwidth_gb_s = float(bandwidth_gb_s)
    cache_bytes = last_level_cache_bytes() or 32 * 2**20
    if table.cache_bytes is None:
        table.cache_bytes, changed = cache_bytes, True
    if table.bandwidth_gb_s is None and runner_factory is None:
        # what a model small enough to keep its weights in the cache saves (latency_predict); 0: none
        table.bandwidth_gb_s = weight_bandwidth(backend, threads, clock=clock, **measure_options) or 0.0
        changed = True
    missing = [s for k, s in unique.items() if k not in table.entries]
    table.cached_shapes = len(unique) - len(missing)
    if missing:

        def copies(spec: LayerSpec, cin: int, cout: int) -> int:
            return 1 if runner_factory else spec.copies(cin, cout, cache_bytes)

        factory = runner_factory or (lambda s, cin, cout: make_runner(
            backend, s.module(cin, cout, copies(s, cin, cout)), s.inputs(cin), threads=threads))
        options = {"min_time_s": 0.05, "min_rounds": 15, "sample_ms": 1.0, **measure_options}

        def timed(points: list[tuple[LayerSpec, int, int]]) -> dict[tuple, float]:
            # chunks of CHUNK runners, interleaved within a chunk: one session per point stays in memory
            # only while its chunk is timed (vgg19's 512-channel convs weigh 9 MB per session)
            out: dict[tuple, float] = {}
            bar = _progress(len(points), progress, f"latency table ({backend})")
            for first in range(0, len(points), CHUNK):
                runners = {}
                for spec, cin, cout in points[first:first + CHUNK]:
                    runners[f"{spec.key}|{cin}|{cout}"] = factory(spec, cin, cout)
                result = measure(runners, threads=threads, backend=backend, clock=clock, **options)
                table.measured_points += len(runners)
                for name, timing in result.items():
                    spec_key, cin, cout = name.split("|")
                    cin, cout = int(cin), int(cout)
                    # the fastest sample: on a shared CPU, other processes only ever add time to a layer
                    out[(spec_key, cin, cout)] = fastest(timing) / copies(unique[spec_key], cin, cout)
                if bar is not None:
                    bar.update(len(runners))
            if bar is not None:
                bar.close()
            return out

        # the block is the machine's: a table that already has entries keeps their step
        steps = [e["step"] for e in table.entries.values()]
        step = max(set(steps), key=steps.count) if steps else _probe_step(missing, timed, tol)
        points = []
        corners = {spec.key: _corner(spec, step) for spec in missing if not spec.depthwise}
        corners = {k: c for k, c in corners.items() if c != (unique[k].in_channels, unique[k].out_channels)}
        for spec in missing:
            points += [(spec, w if spec.depthwise else spec.in_channels, w) for w in grid(spec.out_channels, step)]
            if not spec.depthwise:
                points += [(spec, w, spec.out_channels) for w in grid(spec.in_channels, step)
                           if w != spec.in_channels]
            if spec.key in corners:
                points.append((spec, *corners[spec.key]))
        times = timed(points)
        for spec in missing:
            full = times[(spec.key, spec.in_channels, spec.out_channels)]
            out = [[w, times[(spec.key, w if spec.depthwise else spec.in_channels, w)]]
                   for w in grid(spec.out_channels, step)]
            inn = out if spec.depthwise else [
                [w, times[(spec.key, w, spec.out_channels)] if w != spec.in_channels else full]
                for w in grid(spec.in_channels, step)]
            # timed among copies: the cost includes reading the weights from memory (latency_predict)
            table.entries[spec.key] = {"step": step, "out": out, "in": inn, "weights_read": runner_factory is None}
            if spec.key in corners:
                table.entries[spec.key]["corner"] = times[(spec.key, *corners[spec.key])]
    if path is not None and (missing or changed):
        path.parent.mkdir(parents=True, exist_ok=True)
        table.save(path)
    table.build_seconds = time.perf_counter() - started
    return table


def _corner(spec: LayerSpec, step: int) -> tuple[int, int]:
    """Both widths at their smallest aligned sample: pins the width-independent floor."""
    return tuple(next(w for w in grid(size, step) if aligned(w, size))  # type: ignore[return-value]
                 for size in (spec.in_channels, spec.out_channels))


def _probe_step(specs: list[LayerSpec], timed, tol: float) -> int:
    """The backend's channel block, probed on the conv with the most work per output channel among
    those with >= 32 outputs (tiny spatial maps are overhead-bound and show no blocks)."""
    wide = [s for s in specs if s.out_channels >= 32] or list(specs)
    widest = max(wide, key=lambda s: s.in_channels * s.height * s.width * s.kernel[0] * s.kernel[1])
    if widest.out_channels < 2 * PROBE_STEP:
        return PROBE_STEP
    widths = list(range(PROBE_STEP, min(widest.out_channels, 64) + 1, PROBE_STEP))
    cin = lambda w: w if widest.depthwise else widest.in_channels  # noqa: E731
    times = timed([(widest, cin(w), w) for w in widths])
    return detect_step(widths, [times[(widest.key, cin(w), w)] for w in widths], tol)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="point", leave=False)
