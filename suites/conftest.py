"""Suites run in two modes.

``pytest suites/`` (part of ``make test``): every case runs once, untimed, and checks structure
(counts against suites/baselines/*.json, equivalence, export). ``pytest suites/ --benchmark``: the
same cases are timed with pytest-benchmark and the results are saved as JSON under .benchmarks/;
each case's in-run ratios (speedups over the unpruned model, tool time over one forward) are then
judged against the ratios recorded in the baselines, with the noise-aware rule of
slimbench.bench.regression. ``pytest suites/ --benchmark --update-baselines`` (``make baselines``)
rewrites counts and ratios on purpose (without ``--benchmark`` only the counts).
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from pathlib import Path

import pytest
import torch

from slimbench.bench.regression import (
    UPDATE_COMMAND,
    Ratio,
    compare_counts,
    find_latency_regressions,
    load_baseline,
    load_baseline_ratios,
    write_baseline,
)

BASELINES = Path(__file__).parent / "baselines"


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="time the suites with pytest-benchmark (default: run each case once, untimed)")
    parser.addoption("--update-baselines", action="store_true", default=False,
                     help="rewrite suites/baselines/*.json with the params/MACs (and, with --benchmark, "
                          "the in-run latency ratios) this run measures")


def pytest_configure(config):
    if config.getoption("--benchmark"):
        steady_malloc()
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True
    elif not (config.option.benchmark_save or config.option.benchmark_autosave):
        from pytest_benchmark.utils import get_tag

        # what --benchmark-autosave stores: .benchmarks/<machine>/NNNN_<commit>_<time>.json
        config.option.benchmark_autosave = get_tag()
    config._slimbench_recorded = {}
    config._slimbench_ratios = {}


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    recorded = getattr(config, "_slimbench_recorded", {})
    measured = getattr(config, "_slimbench_ratios", {})
    for suite in sorted(set(recorded) | set(measured)):
        path = BASELINES / f"{suite}.json"
        # a partial run keeps the other cases' baselines
        counts = {**load_baseline(path), **recorded.get(suite, {})}
        ratios, machine = load_baseline_ratios(path)
        if measured.get(suite):
            ratios, machine = {**ratios, **measured[suite]}, machine_description()
        write_baseline(path, counts, ratios, machine=machine)


def steady_malloc() -> bool:
    """Fixed glibc mmap / trim thresholds for this process (regress sets the same for its workers,
    see slimbench.bench.regress.STEADY_MALLOC): glibc otherwise adapts them to what the process
    freed before, and the page faults of plan + prune's large copies (CPU time) vary with that."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to steady
        return False
    return bool(libc.mallopt(-3, 32 << 20)) and bool(libc.mallopt(-1, 1 << 30))  # M_MMAP_ / M_TRIM_THRESHOLD


def machine_description() -> str:
    """What the latency ratios were measured on (they are machine-specific, unlike counts)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cpus, torch threads 1"


class Baselines:
    """``check(suite, case, params=..., macs=...)`` compares counts with the committed baseline (or
    records them); ``check.ratios(suite, case, {metric: Ratio})`` does the same for in-run ratios."""

    def __init__(self, config):
        self.config = config
        self.update = config.getoption("--update-baselines")

    def __call__(self, suite: str, case: str, **counts: int) -> None:
        counts = {k: int(v) for k, v in counts.items()}
        if self.update:
            self.config._slimbench_recorded.setdefault(suite, {})[case] = counts
            return
        problems = compare_counts(load_baseline(BASELINES / f"{suite}.json"), {case: counts}, what=suite)
        assert not problems, "\n".join(problems)

    def ratios(self, suite: str, case: str, ratios: dict[str, Ratio | dict]) -> None:
        ratios = {k: r if isinstance(r, Ratio) else Ratio.from_dict(r) for k, r in ratios.items()}
        if self.update:
            self.config._slimbench_ratios.setdefault(suite, {})[case] = ratios
            return
        recorded, machine = load_baseline_ratios(BASELINES / f"{suite}.json")
        missing = sorted(set(ratios) - set(recorded.get(case, {})))
        if missing:
            warnings.warn(f"{suite}: {case} has no latency baseline for {', '.join(missing)}; record it on this "
                          f"machine with {UPDATE_COMMAND}", stacklevel=2)
        problems = [f"{suite}: {found}" for metric, new in sorted(ratios.items()) if metric in recorded.get(case, {})
                    for found in find_latency_regressions({case: recorded[case][metric]}, {case: new},
                                                          metric=metric)]
        assert not problems, "\n".join(problems) + (
            f"\n(latency baselines measured on {machine or 'an unknown machine'}; this machine: "
            f"{machine_description()}; if the change is intended or the machine changed, rewrite them with "
            f"{UPDATE_COMMAND})")


@pytest.fixture
def timed(request) -> bool:
    """True under --benchmark: suites then also measure latency."""
    return request.config.getoption("--benchmark")


@pytest.fixture
def count_baseline(request) -> Baselines:
    """``check(suite, case, params=..., macs=...)``: compare with the committed baseline, or record it;
    ``check.ratios(suite, case, ratios)`` for in-run latency ratios."""
    return Baselines(request.config)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
