"""Regression checks for CI: exact counts against committed baselines, latency only as in-run ratios.

Counts (params, MACs) are deterministic, so any change is reported. Latency is never compared
across runs in absolute terms: each run measures candidate and reference interleaved and yields a
ratio (pruned / unpruned time, or candidate / reference); ratios are what we compare.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from slimbench.bench.latency import Timing
from slimbench.core.atomic import atomic_write_text

__all__ = ["Regression", "latency_ratios", "find_latency_regressions", "check_slowdown", "compare_counts",
           "load_baseline", "write_baseline", "UPDATE_COMMAND"]

UPDATE_COMMAND = "make baselines  (= pytest suites -q --update-baselines)"


@dataclass(frozen=True)
class Regression:
    case: str
    reference: float
    candidate: float

    @property
    def change(self) -> float:
        return self.candidate / self.reference - 1.0

    def __str__(self) -> str:
        return (f"{self.case}: time ratio {self.reference:.3f} -> {self.candidate:.3f} "
                f"({self.change:+.1%}, slower)")


def latency_ratios(timings: Mapping[str, Timing], reference: str) -> dict[str, float]:
    """Each model's median time divided by the reference model's, all from one interleaved run."""
    if reference not in timings:
        raise KeyError(f"reference {reference!r} is not among the timed models {sorted(timings)}")
    base = timings[reference].median_ms
    return {name: t.median_ms / base for name, t in timings.items() if name != reference}


def find_latency_regressions(reference_run: Mapping[str, float], candidate_run: Mapping[str, float], *,
                             tolerance: float = 0.10) -> list[Regression]:
    """Cases whose in-run time ratio grew by more than ``tolerance`` (0.10 = 10 %).

    Both arguments map a case name to a ratio measured within one run (for example pruned /
    unpruned median time). Cases present in only one run are ignored: counts, not latency, decide
    whether the set of cases changed.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    return [Regression(case, reference_run[case], candidate_run[case]) for case in sorted(reference_run)
            if case in candidate_run and candidate_run[case] > reference_run[case] * (1.0 + tolerance)]


def check_slowdown(reference: Timing, candidate: Timing, *, tolerance: float = 0.10) -> Regression | None:
    """A Regression when ``candidate`` (timed interleaved with ``reference``) is slower beyond tolerance."""
    found = find_latency_regressions({candidate.name: 1.0}, {candidate.name: candidate.median_ms
                                                             / reference.median_ms}, tolerance=tolerance)
    return found[0] if found else None


def compare_counts(baseline: Mapping[str, Mapping[str, int]], measured: Mapping[str, Mapping[str, int]],
                   *, what: str = "suite") -> list[str]:
    """One message per case whose counts differ from the baseline, or that has no baseline.

    Cases in the baseline but not measured are not errors (a run may select a subset).
    """
    problems = []
    for case in sorted(measured):
        if case not in baseline:
            problems.append(f"{what}: case {case} has no baseline; if it is new, record it with {UPDATE_COMMAND}")
            continue
        for key, value in sorted(measured[case].items()):
            expected = baseline[case].get(key)
            if expected is None:
                problems.append(f"{what}: case {case} has no baseline {key}; run {UPDATE_COMMAND}")
            elif value != expected:
                change = (value - expected) / expected if expected else float("inf")
                problems.append(f"{what}: {case} {key} moved {expected:,} -> {value:,} ({change:+.2%}); "
                                f"if this is intended, rewrite the baselines with {UPDATE_COMMAND}")
    return problems


def load_baseline(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """A baselines file: ``{case: {"params": int, "macs": int}}``; missing file = empty baseline."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"baseline file {path} is not valid JSON ({error}); rewrite it with "
                         f"{UPDATE_COMMAND}") from error
    if not isinstance(data, dict) or not isinstance(data.get("cases"), dict):
        raise ValueError(f"baseline file {path} has no 'cases' object; rewrite it with {UPDATE_COMMAND}")
    return data["cases"]


def write_baseline(path: str | os.PathLike, cases: Mapping[str, Mapping[str, int]]) -> Path:
    """Write cases (sorted, stable) atomically: a temporary file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": "slimbench.baseline/1", "update_with": UPDATE_COMMAND,
                       "cases": {k: dict(sorted(v.items())) for k, v in sorted(cases.items())}}, indent=1)
    return atomic_write_text(path, text + "\n")
