"""Start-up cost of the command line: ``slimbench --help`` in a fresh interpreter against ``python -c pass``.

Quick mode (no ``--benchmark``): one ``slimbench --help`` run, checked for its output and for importing
no torch. With ``--benchmark``: pytest-benchmark times ``slimbench --help`` in a subprocess, and both
medians (``--help`` and a bare interpreter, measured interleaved in this run) and their ratio go to
``extra_info``. The issue's target: well under a second, i.e. a small multiple of ``python -c pass``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
HELP = [sys.executable, "-m", "slimbench", "--help"]
BARE = [sys.executable, "-c", "pass"]
NO_TORCH = [sys.executable, "-c", "import contextlib, io, sys\nfrom slimbench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])\n"
            "print('torch' in sys.modules)"]
REPEATS = 7


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True, cwd=ROOT).stdout


def _seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    _run(cmd)
    return time.perf_counter() - start


def test_help_startup_against_a_bare_interpreter(benchmark, timed):
    out = benchmark(_run, HELP)
    assert "usage: slimbench" in out and "report" in out
    assert _run(NO_TORCH).strip() == "False"
    if timed:
        bare, help_ = [], []
        for _ in range(REPEATS):  # interleaved, so both see the same machine load
            bare.append(_seconds(BARE))
            help_.append(_seconds(HELP))
        bare_s, help_s = statistics.median(bare), statistics.median(help_)
        benchmark.extra_info.update({"help_seconds": round(help_s, 4), "python_pass_seconds": round(bare_s, 4),
                                     "ratio": round(help_s / bare_s, 2)})
