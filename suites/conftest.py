"""Suites run in two modes.

``pytest suites/`` (part of ``make test``): every case runs once, untimed, and checks structure
(counts against suites/baselines/*.json, equivalence, export). ``pytest suites/ --benchmark``: the
same cases are timed with pytest-benchmark and the results are saved as JSON under .benchmarks/.
``pytest suites/ --update-baselines`` (``make baselines``) rewrites the count baselines on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slimbench.bench.regression import compare_counts, load_baseline, write_baseline

BASELINES = Path(__file__).parent / "baselines"


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="time the suites with pytest-benchmark (default: run each case once, untimed)")
    parser.addoption("--update-baselines", action="store_true", default=False,
                     help="rewrite suites/baselines/*.json with the params/MACs this run measures")


def pytest_configure(config):
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True
    elif not (config.option.benchmark_save or config.option.benchmark_autosave):
        from pytest_benchmark.utils import get_tag

        # what --benchmark-autosave stores: .benchmarks/<machine>/NNNN_<commit>_<time>.json
        config.option.benchmark_autosave = get_tag()
    config._slimbench_recorded = {}


def pytest_sessionfinish(session, exitstatus):
    recorded = getattr(session.config, "_slimbench_recorded", {})
    for suite, cases in recorded.items():
        path = BASELINES / f"{suite}.json"
        merged = {**load_baseline(path), **cases}  # a partial run keeps the other cases' baselines
        write_baseline(path, merged)


@pytest.fixture
def timed(request) -> bool:
    """True under --benchmark: suites then also measure latency."""
    return request.config.getoption("--benchmark")


@pytest.fixture
def count_baseline(request):
    """``check(suite, case, params=..., macs=...)``: compare with the committed baseline, or record it."""
    config = request.config

    def check(suite: str, case: str, **counts: int) -> None:
        counts = {k: int(v) for k, v in counts.items()}
        if config.getoption("--update-baselines"):
            config._slimbench_recorded.setdefault(suite, {})[case] = counts
            return
        problems = compare_counts(load_baseline(BASELINES / f"{suite}.json"), {case: counts}, what=suite)
        assert not problems, "\n".join(problems)

    return check


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
