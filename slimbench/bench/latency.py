"""CPU latency on registered backends (torch eager, onnxruntime, OpenVINO), measured interleaved.

Absolute times move 10-30 % between runs and machines; ratios of models timed round-robin in one
process do not. So ``measure`` takes several runners and times them A, B, ..., B, A, ... until a
time and count budget is met, and every comparison in this project is a ratio within one call.
Each sample is the mean over enough back-to-back calls to last ``sample_ms`` (timer resolution
and scheduler jitter dominate single sub-millisecond calls); the summary is the median and IQR.
Backends live in a registry (``BACKENDS``): adding one is one ``register_backend`` call, and the
report's rows, speedup columns and plot, and the suites, loop over the registered, available ones.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import math
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from slimbench.core.errors import SlimbenchRuntimeError
from slimbench.core.inputs import ExampleInputs, as_example_inputs

__all__ = ["Timing", "Backend", "BackendUnavailable", "BACKENDS", "register_backend", "get_backend",
           "available_backends", "require_backends", "backend_versions", "cpu_model",
           "last_level_cache_bytes", "weight_bandwidth",
           "environment", "batch_inputs", "torch_runner", "ort_runner", "openvino_runner", "make_runner", "measure",
           "time_models", "speedup", "speedup_iqr"]

Runner = Callable[[], object]


class BackendUnavailable(SlimbenchRuntimeError):
    """A registered latency backend whose package is not installed."""


def _module_available(module: str) -> Callable[[], bool]:
    return lambda: importlib.util.find_spec(module) is not None


def _module_version(module: str) -> Callable[[], str | None]:
    def version() -> str | None:
        if importlib.util.find_spec(module) is None:
            return None
        return str(getattr(importlib.import_module(module), "__version__", "unknown"))

    return version


@dataclass(frozen=True)
class Backend:
    """One latency backend: ``factory(model, inputs, threads)`` returns a runner (one inference).

    ``label`` names its columns in tables and plots; ``available()`` is a cheap check (no import of
    the runtime) consulted before anything is timed; ``version()`` goes into the report's provenance.
    """

    name: str
    label: str
    factory: Callable[[nn.Module, tuple[Tensor, ...], int], Runner]
    available: Callable[[], bool] = lambda: True
    version: Callable[[], str | None] = lambda: None
    install_hint: str = ""
    package: str = ""  # the package whose version the provenance records (default: the name)


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a latency backend; report rows, speedup columns, plots and suites follow."""
    if not backend.name.isidentifier():
        raise ValueError(f"backend name {backend.name!r} must be an identifier (it names row keys)")
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown latency backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name]


def available_backends() -> list[str]:
    """Registered backends whose package is installed, in registration order."""
    return [name for name, backend in BACKENDS.items() if backend.available()]


def require_backends(names: Sequence[str]) -> list[str]:
    """``names`` checked: each registered (ValueError) and installed (BackendUnavailable, with the fix)."""
    for name in names:
        backend = get_backend(name)
        if not backend.available():
            hint = f": {backend.install_hint}" if backend.install_hint else ""
            raise BackendUnavailable(f"--backends {name}: {backend.label} is not installed{hint}")
    return list(names)


def backend_versions() -> dict[str, str | None]:
    """Each registered backend's package and its version (None when not installed)."""
    return {backend.package or name: backend.version() for name, backend in BACKENDS.items()}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache (Linux sysfs), None where it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text.rstrip("KkMmGg")
        if digits.isdigit():
            sizes.append(int(digits) * unit)
    return max(sizes) if sizes else None


PROBE_CHANNELS = 512  # the bandwidth probe's conv: 512 -> 512, 3x3, 9.4 MB of float32 weights
PROBE_LAYERS = (4, 16)  # at least / at most this many in the chain (twice the last-level cache between)


def _conv_block(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU())


def weight_bandwidth(backend: str = "ort", threads: int = 1, **measure_options) -> float | None:
    """GB/s at which ``backend`` reads conv weights that are not in the cache: bytes of one probe conv
    over (chain time / layers - one conv's time); None when the chain costs no more per layer than
    the conv alone (weights never wait on memory: no memory term)."""
    layer_bytes = 4 * PROBE_CHANNELS * PROBE_CHANNELS * 9
    cache = last_level_cache_bytes() or 32 * 2**20
    layers = min(max(math.ceil(2 * cache / layer_bytes), PROBE_LAYERS[0]), PROBE_LAYERS[1])
    with torch.random.fork_rng():  # the probe's random weights leave the caller's random stream as it was
        x = (torch.randn(1, PROBE_CHANNELS, 2, 2),)
        chain = nn.Sequential(*[_conv_block(PROBE_CHANNELS) for _ in range(layers)]).eval()
        one = _conv_block(PROBE_CHANNELS).eval()
    runners = {"chain": make_runner(backend, chain, x, threads=threads),
               "one": make_runner(backend, one, x, threads=threads)}
    options = {"min_time_s": 0.5, "min_rounds": 15, **measure_options}
    timings = measure(runners, threads=threads, backend=backend, **options)
    chain_ms, one_ms = (min(timings[k].samples_ms) for k in ("chain", "one"))
    extra_ms = chain_ms / layers - one_ms
    return layer_bytes / extra_ms / 1e6 if extra_ms > 0 else None


def _git(*args: str) -> str | None:
    folder = os.path.dirname(os.path.abspath(__file__))
    try:
        done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment(threads: int = 1) -> dict:
    """What a latency number depends on: machine, CPU, threads, runtime versions and the commit
    (``None`` outside a git checkout; ``dirty`` when the working tree has uncommitted changes)."""
    commit = _git("rev-parse", "HEAD")
    return {"machine": platform.node(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "versions": backend_versions(), "commit": commit,
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None}


@dataclass(frozen=True)
class Timing:
    """Per-call times of one runner (ms); each sample is a mean over ``inner`` back-to-back calls."""

    name: str
    samples_ms: tuple[float, ...]
    inner: int = 1
    backend: str = ""
    threads: int = 1
    batch_size: int = 1

    def _quantile(self, q: float) -> float:
        return float(np.quantile(np.asarray(self.samples_ms), q))

    @property
    def median_ms(self) -> float:
        return self._quantile(0.5)

    @property
    def iqr_ms(self) -> float:
        return self._quantile(0.75) - self._quantile(0.25)

    @property
    def iqr_fraction(self) -> float:
        """IQR as a fraction of the median: the run's noise, to be checked before trusting a ratio."""
        return self.iqr_ms / self.median_ms

    def to_dict(self) -> dict:
        data = asdict(self)
        data["samples_ms"] = list(self.samples_ms)
        data.update(median_ms=self.median_ms, iqr_ms=self.iqr_ms)
        return data


def speedup(reference: Timing, candidate: Timing) -> float:
    """How many times faster ``candidate`` is than ``reference`` (ratio of medians)."""
    return reference.median_ms / candidate.median_ms


def speedup_iqr(reference: Timing, candidate: Timing) -> float:
    """The spread of a speedup: IQR of the per-round ratios (``measure`` times runners in rounds, so
    sample i of each runner comes from the same round); same unit as :func:`speedup` (x)."""
    n = min(len(reference.samples_ms), len(candidate.samples_ms))
    if n == 0:
        raise ValueError("speedup_iqr needs timings with samples")
    ratios = np.asarray(reference.samples_ms[:n]) / np.asarray(candidate.samples_ms[:n])
    return float(np.quantile(ratios, 0.75) - np.quantile(ratios, 0.25))


def batch_inputs(example_inputs: ExampleInputs, batch_size: int = 1) -> tuple[Tensor, ...]:
    """Example inputs at ``batch_size``: a shape gets random data, a tensor's first row is repeated."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = as_example_inputs(example_inputs)
    return tuple(t[:1].expand(batch_size, *t.shape[1:]).contiguous() for t in inputs)


@contextmanager
def _torch_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_runner(model: nn.Module, inputs: Sequence[Tensor]) -> Runner:
    """One eager forward pass in inference mode on a private eval-mode copy of ``model``."""
    frozen = copy.deepcopy(model).eval()
    inputs = tuple(inputs)

    def run():
        with torch.inference_mode():
            return frozen(*inputs)

    return run


def ort_runner(model: nn.Module, inputs: Sequence[Tensor], *, threads: int = 1) -> Runner:
    """One onnxruntime run of ``model`` exported to ONNX (TorchScript exporter, see export.py)."""
    from slimbench.bench.export import export_onnx, onnx_session, session_feed

    with tempfile.TemporaryDirectory(prefix="slimbench-ort-") as folder:
        path = export_onnx(model, tuple(inputs), os.path.join(folder, "model.onnx"))
        session = onnx_session(path, threads=threads)  # the session keeps the graph in memory
    feed = session_feed(session, tuple(inputs))
    return lambda: session.run(None, feed)


def openvino_runner(model: nn.Module, inputs: Sequence[Tensor], *, threads: int = 1) -> Runner:
    """One OpenVINO CPU inference of ``model`` converted in memory (``openvino.convert_model``)."""
    import openvino as ov

    frozen = copy.deepcopy(model).eval()
    converted = ov.convert_model(frozen, example_input=tuple(inputs))
    # float32 like the other backends: on CPUs with bf16 support OpenVINO otherwise picks bf16 by itself
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    arrays = [t.numpy() for t in inputs]
    return lambda: request.infer(arrays)


register_backend(Backend("torch", "torch", lambda m, x, threads: torch_runner(m, x),
                         version=lambda: torch.__version__))
register_backend(Backend("ort", "ort", lambda m, x, threads: ort_runner(m, x, threads=threads),
                         available=_module_available("onnxruntime"), version=_module_version("onnxruntime"),
                         install_hint="pip install onnxruntime", package="onnxruntime"))
register_backend(Backend("openvino", "OpenVINO", lambda m, x, threads: openvino_runner(m, x, threads=threads),
                         available=_module_available("openvino"), version=_module_version("openvino"),
                         install_hint="pip install 'slimbench[openvino]' (or pip install openvino)"))


def make_runner(backend: str, model: nn.Module, inputs: Sequence[Tensor], *, threads: int = 1) -> Runner:
    """A runner for ``model`` on the registered ``backend``; BackendUnavailable when it is not installed."""
    require_backends([backend])
    return BACKENDS[backend].factory(model, tuple(inputs), threads)


def _calibrate(runner: Runner, warmup: int, sample_ms: float, clock: Callable[[], float]) -> int:
    for _ in range(max(warmup, 1)):
        runner()
    start = clock()
    runner()
    once_ms = (clock() - start) * 1e3
    return max(1, math.ceil(sample_ms / max(once_ms, 1e-3)))


def measure(runners: Mapping[str, Runner], *, threads: int = 1, warmup: int = 3, min_time_s: float = 0.3,
            min_rounds: int = 10, max_rounds: int = 1000, sample_ms: float = 5.0, backend: str = "",
            batch_size: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time runners interleaved until each has run ``min_time_s`` and ``min_rounds`` samples.

    Round r runs the runners in order, round r+1 in reverse order, so that no runner always
    follows the same neighbour (cache and frequency effects cancel). torch uses ``threads``
    intra-op threads for the duration of the call. ``clock`` (seconds) is injectable so that the
    regression logic can be tested on deterministic simulated time.
    """
    if not runners:
        raise ValueError("measure needs at least one runner")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds}, {max_rounds}")
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    spent = dict.fromkeys(names, 0.0)
    with _torch_threads(threads):
        inner = {n: _calibrate(runners[n], warmup, sample_ms, clock) for n in names}
        for round_index in range(max_rounds):
            order = names if round_index % 2 == 0 else names[::-1]
            for name in order:
                runner, k = runners[name], inner[name]
                start = clock()
                for _ in range(k):
                    runner()
                elapsed = clock() - start
                spent[name] += elapsed
                samples[name].append(elapsed * 1e3 / k)
            if round_index + 1 >= min_rounds and min(spent.values()) >= min_time_s:
                break
    return {n: Timing(n, tuple(samples[n]), inner[n], backend, threads, batch_size) for n in names}


def time_models(models: Mapping[str, nn.Module], example_inputs: ExampleInputs, *,
                backends: Sequence[str] = ("torch", "ort"), threads: int = 1, batch_size: int = 1,
                **measure_options) -> dict[str, dict[str, Timing]]:
    """Latency of every model on every backend: ``{backend: {model name: Timing}}``.

    Models are interleaved within a backend. Every backend must be registered and installed
    (checked before anything is timed): a missing one is a BackendUnavailable naming the fix.
    """
    require_backends(backends)
    inputs = batch_inputs(example_inputs, batch_size)
    result: dict[str, dict[str, Timing]] = {}
    for backend in backends:
        runners = {name: make_runner(backend, m, inputs, threads=threads) for name, m in models.items()}
        result[backend] = measure(runners, threads=threads, backend=backend, batch_size=batch_size,
                                  **measure_options)
    return result
