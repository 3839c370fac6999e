"""Suites run in two modes.

``pytest suites/`` (part of ``make test``): every case runs once, untimed, and checks structure
(counts, equivalence). ``pytest suites/ --benchmark``: the same cases are timed with
pytest-benchmark and the results are saved as JSON under .benchmarks/.
"""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true", default=False,
                     help="time the suites with pytest-benchmark (default: run each case once, untimed)")


def pytest_configure(config):
    if not config.getoption("--benchmark"):
        config.option.benchmark_disable = True
    else:
        config.option.benchmark_autosave = True


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
