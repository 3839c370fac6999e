"""CPU latency in torch eager, onnxruntime and (when installed) OpenVINO, measured interleaved.

Absolute times move 10-30 % between runs and machines; ratios of models timed round-robin in one
process do not. So ``measure`` takes several runners and times them A, B, ..., B, A, ... until a
time and count budget is met, and every comparison in this project is a ratio within one call.
Each sample is the mean over enough back-to-back calls to last ``sample_ms`` (timer resolution
and scheduler jitter dominate single sub-millisecond calls); the summary is the median and IQR.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from slimbench.core.inputs import ExampleInputs, as_example_inputs

__all__ = ["Timing", "BackendUnavailable", "BACKENDS", "batch_inputs", "torch_runner", "ort_runner",
           "openvino_runner", "make_runner", "measure", "time_models", "speedup"]

BACKENDS = ("torch", "ort", "openvino")
Runner = Callable[[], object]


class BackendUnavailable(RuntimeError):
    """An optional latency backend (OpenVINO) is not installed."""


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
    """One OpenVINO CPU inference; raises BackendUnavailable when openvino is not installed."""
    try:
        import openvino as ov
    except ImportError as error:
        raise BackendUnavailable("the openvino backend needs `pip install openvino`") from error
    frozen = copy.deepcopy(model).eval()
    converted = ov.convert_model(frozen, example_input=tuple(inputs))
    compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    arrays = [t.numpy() for t in inputs]
    return lambda: request.infer(arrays)


def make_runner(backend: str, model: nn.Module, inputs: Sequence[Tensor], *, threads: int = 1) -> Runner:
    if backend == "torch":
        return torch_runner(model, inputs)
    if backend == "ort":
        return ort_runner(model, inputs, threads=threads)
    if backend == "openvino":
        return openvino_runner(model, inputs, threads=threads)
    raise ValueError(f"unknown latency backend {backend!r}; choose from {', '.join(BACKENDS)}")


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

    Models are interleaved within a backend. A backend that is not installed (OpenVINO) is left out
    of the result rather than failing the whole comparison.
    """
    inputs = batch_inputs(example_inputs, batch_size)
    result: dict[str, dict[str, Timing]] = {}
    for backend in backends:
        try:
            runners = {name: make_runner(backend, m, inputs, threads=threads) for name, m in models.items()}
        except BackendUnavailable:
            continue
        result[backend] = measure(runners, threads=threads, backend=backend, batch_size=batch_size,
                                  **measure_options)
    return result
