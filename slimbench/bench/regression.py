"""Regression checks for CI: exact counts against committed baselines, latency only as in-run ratios.

Counts (params, MACs) are deterministic, so any change is reported. Latency is never compared
across runs in absolute terms: each run measures candidate and reference interleaved and yields a
ratio (pruned / unpruned time, or candidate / reference); ratios are what we compare.

The rule knows the noise. A :class:`Ratio` carries its spread (IQR / median of the per-round
ratios) and its number of rounds, hence the standard error of its median, about
0.93 x spread / sqrt(rounds). A ratio regressed when it moved the slow way by more than
``max(tolerance, z x combined standard error, DISTURBANCE x combined spread)``: small moves never
alarm (the tolerance floor absorbs what differs between two runs beyond sampling: frequency,
neighbours' load), and a run too noisy to resolve the tolerance widens its own limit instead of
raising false alarms; such a ratio is marked ``noisy`` so the reader knows a 15 % change could hide
there.

The spread term is there because the standard error assumes independent rounds, and a disturbed
run breaks that: a neighbour that slows the machine for a second slows the two models unequally
(the small one more), so the median itself moves. Measured here on a tiny pair timed 90 times,
clean runs had spreads of 0.02-0.04 and moved under 2 %; the six disturbed ones had spreads of
0.15-0.33 and moved by 0.35-0.6 x their spread (up to 14 %), beyond three standard errors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from slimbench.core.atomic import atomic_write_text

if TYPE_CHECKING:  # latency imports torch; comparing JSON files must not
    from slimbench.bench.latency import Timing

__all__ = ["Regression", "Ratio", "CountChange", "latency_ratios", "paired_ratio", "find_latency_regressions",
           "slowdown_limit", "check_slowdown", "count_changes", "compare_counts", "load_baseline",
           "load_baseline_ratios", "write_baseline", "UPDATE_COMMAND", "DEFAULT_TOLERANCE", "DEFAULT_Z",
           "NOISY_LIMIT", "DISTURBANCE"]

UPDATE_COMMAND = "make baselines  (= pytest suites -q --benchmark --update-baselines)"
DEFAULT_TOLERANCE = 0.10  # the smallest slowdown called a regression
DEFAULT_Z = 3.0  # standard errors a move must also exceed
DISTURBANCE = 0.75  # how far a disturbed run's median may move, per unit of its per-round spread
NOISY_LIMIT = 0.15  # a limit above this cannot see the 15 % slowdown the project promises to catch
_SE_PER_IQR = 1.2533 / 1.349  # standard error of a median, per (IQR / sqrt(n)), for normal-ish samples


@dataclass(frozen=True)
class Ratio:
    """A ratio measured within one run: its value, its spread (IQR / median of the per-round
    ratios; 0 when unknown) and the number of rounds behind it (0 when unknown).

    ``higher_is_better`` is True for speedups (unpruned / pruned time) and False for time ratios
    (candidate / reference, tool time / one forward).
    """

    value: float
    spread: float = 0.0
    rounds: int = 0
    higher_is_better: bool = False

    @property
    def std_error(self) -> float:
        """Relative standard error of the median ratio (0 when spread or rounds are unknown)."""
        if self.spread <= 0 or self.rounds <= 0:
            return 0.0
        return _SE_PER_IQR * self.spread / math.sqrt(self.rounds)

    def slowdown_to(self, new: Ratio) -> float:
        """How much slower ``new`` is than this ratio (0.15 = 15 % slower; negative = faster)."""
        return self.value / new.value - 1.0 if self.higher_is_better else new.value / self.value - 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Ratio:
        return cls(float(data["value"]), float(data.get("spread", 0.0) or 0.0), int(data.get("rounds", 0) or 0),
                   bool(data.get("higher_is_better", False)))


@dataclass(frozen=True)
class Regression:
    case: str
    reference: float
    candidate: float
    metric: str = "time ratio"
    limit: float = 0.0
    higher_is_better: bool = False

    @property
    def change(self) -> float:
        return self.candidate / self.reference - 1.0

    @property
    def slowdown(self) -> float:
        return (self.reference / self.candidate if self.higher_is_better else self.candidate / self.reference) - 1.0

    def __str__(self) -> str:
        limit = f", limit {self.limit:.1%}" if self.limit else ""
        return (f"{self.case}: {self.metric} {self.reference:.3f} -> {self.candidate:.3f} "
                f"({self.change:+.1%}, slower by {self.slowdown:.1%}{limit})")


def latency_ratios(timings: Mapping[str, Timing], reference: str) -> dict[str, float]:
    """Each model's median time divided by the reference model's, all from one interleaved run."""
    if reference not in timings:
        raise KeyError(f"reference {reference!r} is not among the timed models {sorted(timings)}")
    base = timings[reference].median_ms
    return {name: t.median_ms / base for name, t in timings.items() if name != reference}


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float], *, higher_is_better: bool = False
                 ) -> Ratio:
    """Ratio of medians of two sample lists taken round by round (sample i of each in round i),
    with the spread of the per-round ratios: load that hits both in one round cancels there."""
    if not numerator or len(numerator) != len(denominator):
        raise ValueError(f"paired_ratio needs two equally long, non-empty sample lists, got "
                         f"{len(numerator)} and {len(denominator)}")
    per_round = np.asarray(numerator, float) / np.asarray(denominator, float)
    q1, q2, q3 = np.quantile(per_round, [0.25, 0.5, 0.75])
    value = float(np.median(numerator) / np.median(denominator))
    return Ratio(value, float((q3 - q1) / q2), len(per_round), higher_is_better)


def slowdown_limit(reference: Ratio, candidate: Ratio, *, tolerance: float = DEFAULT_TOLERANCE,
                   z: float = DEFAULT_Z) -> float:
    """The slowdown above which ``candidate`` regressed from ``reference``: the tolerance, or, when
    the runs were noisier than that, z combined standard errors of the two ratios or
    ``DISTURBANCE`` times their combined per-round spread (a disturbed run; see the module doc)."""
    if tolerance < 0 or z < 0:
        raise ValueError(f"tolerance and z must be >= 0, got {tolerance}, {z}")
    return max(tolerance, z * math.hypot(reference.std_error, candidate.std_error),
               DISTURBANCE * math.hypot(reference.spread, candidate.spread))


def _as_ratio(value: float | Ratio) -> Ratio:
    return value if isinstance(value, Ratio) else Ratio(float(value))


def find_latency_regressions(reference_run: Mapping[str, float | Ratio], candidate_run: Mapping[str, float | Ratio],
                             *, tolerance: float = DEFAULT_TOLERANCE, z: float = DEFAULT_Z,
                             metric: str = "time ratio") -> list[Regression]:
    """Cases whose in-run ratio moved the slow way by more than :func:`slowdown_limit`.

    Both arguments map a case name to a ratio measured within one run (for example pruned /
    unpruned median time), as a float (a time ratio, lower is better, noise unknown) or a
    :class:`Ratio`. Cases present in only one run are ignored: counts, not latency, decide
    whether the set of cases changed.
    """
    found = []
    for case in sorted(reference_run):
        if case not in candidate_run:
            continue
        old, new = _as_ratio(reference_run[case]), _as_ratio(candidate_run[case])
        limit = slowdown_limit(old, new, tolerance=tolerance, z=z)
        if old.slowdown_to(new) > limit:
            found.append(Regression(case, old.value, new.value, metric, limit, old.higher_is_better))
    return found


def check_slowdown(reference: Timing, candidate: Timing, *, tolerance: float = DEFAULT_TOLERANCE,
                   z: float = DEFAULT_Z) -> Regression | None:
    """A Regression when ``candidate`` (timed interleaved with ``reference``) is slower beyond the limit."""
    ratio = paired_ratio(candidate.samples_ms, reference.samples_ms)
    found = find_latency_regressions({candidate.name: Ratio(1.0)}, {candidate.name: ratio}, tolerance=tolerance,
                                     z=z)
    return found[0] if found else None


@dataclass(frozen=True)
class CountChange:
    case: str
    key: str
    old: int | None  # None: the baseline has no such count (or no such case)
    new: int

    @property
    def change(self) -> float:
        return (self.new - self.old) / self.old if self.old else float("inf")


def count_changes(baseline: Mapping[str, Mapping[str, int]], measured: Mapping[str, Mapping[str, int]]
                  ) -> list[CountChange]:
    """Every measured count that differs from the baseline or has none there (case missing: key "*")."""
    changes = []
    for case in sorted(measured):
        if case not in baseline:
            changes.append(CountChange(case, "*", None, 0))
            continue
        for key, value in sorted(measured[case].items()):
            if value is None:
                continue
            expected = baseline[case].get(key)
            if expected is None or value != expected:
                changes.append(CountChange(case, key, expected, value))
    return changes


def compare_counts(baseline: Mapping[str, Mapping[str, int]], measured: Mapping[str, Mapping[str, int]],
                   *, what: str = "suite") -> list[str]:
    """One message per case whose counts differ from the baseline, or that has no baseline.

    Cases in the baseline but not measured are not errors (a run may select a subset).
    """
    problems = []
    for c in count_changes(baseline, measured):
        if c.key == "*":
            problems.append(f"{what}: case {c.case} has no baseline; if it is new, record it with {UPDATE_COMMAND}")
        elif c.old is None:
            problems.append(f"{what}: case {c.case} has no baseline {c.key}; run {UPDATE_COMMAND}")
        else:
            problems.append(f"{what}: {c.case} {c.key} moved {c.old:,} -> {c.new:,} ({c.change:+.2%}); "
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


def load_baseline_ratios(path: str | os.PathLike) -> tuple[dict[str, dict[str, Ratio]], str]:
    """The in-run ratios of a baselines file, ``{case: {metric: Ratio}}``, and the machine they were
    measured on; files written before ratios were recorded have none (``{}``, "")."""
    path = Path(path)
    if not path.exists():
        return {}, ""
    load_baseline(path)  # the same format errors as for counts
    data = json.loads(path.read_text())
    try:
        ratios = {case: {metric: Ratio.from_dict(r) for metric, r in metrics.items()}
                  for case, metrics in data.get("ratios", {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"baseline file {path} has a malformed 'ratios' object ({error!r}); rewrite it with "
                         f"{UPDATE_COMMAND}") from error
    return ratios, str(data.get("ratios_machine", ""))


def write_baseline(path: str | os.PathLike, cases: Mapping[str, Mapping[str, int]],
                   ratios: Mapping[str, Mapping[str, Ratio]] | None = None, *, machine: str = "") -> Path:
    """Write cases (sorted, stable) atomically: a temporary file in the same folder, then os.replace.

    ``ratios`` (in-run speedups and tool-speed ratios per case) go under their own key, so that
    readers of the counts (``cases``, unchanged since format 1) need not know about them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": "slimbench.baseline/1", "update_with": UPDATE_COMMAND,
            "cases": {k: dict(sorted(v.items())) for k, v in sorted(cases.items())}}
    if ratios:
        data["ratios_machine"] = machine
        data["ratios"] = {case: {m: _rounded(r) for m, r in sorted(metrics.items())}
                          for case, metrics in sorted(ratios.items())}
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def _rounded(ratio: Ratio) -> dict:
    return {"value": round(ratio.value, 4), "spread": round(ratio.spread, 4), "rounds": ratio.rounds,
            "higher_is_better": ratio.higher_is_better}


def speedup_info(unpruned, pruned, example_inputs, *, backends: Sequence[str] = ("torch", "ort"),
                 **measure_options) -> dict:
    """Benchmark ``extra_info`` for a pruned model: per backend ``speedup_<backend>`` (unpruned /
    pruned median time, interleaved in this call) and ``iqr_fraction_<backend>``, and ``ratios``
    (each speedup as a :class:`Ratio` dict with its spread and rounds), which compare reads.

    Timed in thread CPU time by default (``clock``): one-thread inference runs in the calling
    thread, and CPU time leaves out the time the OS gives the core to other processes, which on a
    loaded 2-core box spreads wall-clock ratios over 2x; CPU-time ratios spread by under 10 %.
    """
    import time

    from slimbench.bench.latency import make_runner, measure, speedup, speedup_iqr

    measure_options.setdefault("clock", time.thread_time)
    info: dict = {"ratios": {}, "clock": getattr(measure_options["clock"], "__name__", "custom")}
    for backend in backends:
        runners = {"unpruned": make_runner(backend, unpruned, example_inputs),
                   "pruned": make_runner(backend, pruned, example_inputs)}
        timings = measure(runners, backend=backend, **measure_options)
        ratio = paired_ratio(timings["unpruned"].samples_ms, timings["pruned"].samples_ms, higher_is_better=True)
        info[f"speedup_{backend}"] = speedup(timings["unpruned"], timings["pruned"])
        info[f"speedup_{backend}_iqr"] = speedup_iqr(timings["unpruned"], timings["pruned"])
        info[f"iqr_fraction_{backend}"] = timings["pruned"].iqr_fraction
        info["ratios"][f"speedup_{backend}"] = _rounded(ratio)
    return info


def tool_ratio(tool, forward, *, rounds: int = 7, warmup: int = 1, clock=None) -> Ratio:
    """Time of one ``tool()`` call over one ``forward()`` call, the two alternated ``rounds`` times
    (lower is better): how tool speed is tracked without trusting absolute times. Thread CPU time
    by default, for the reason given in :func:`speedup_info`."""
    import time

    clock = clock or time.thread_time
    for _ in range(warmup):
        tool()
        forward()
    tool_s, forward_s = [], []
    for _ in range(rounds):
        for fn, samples in ((tool, tool_s), (forward, forward_s)):
            start = clock()
            fn()
            samples.append(clock() - start)
    return paired_ratio(tool_s, forward_s)
