"""Compare two benchmark runs (pytest-benchmark JSON from ``pytest suites --benchmark``).

Counts (params, MACs, FLOPs) are judged exactly. Latency is judged only through the ratios each
run measured within itself (``extra_info["ratios"]``: speedups over the unpruned model, tool time
over one forward), with the noise-aware rule of :mod:`slimbench.bench.regression`; absolute times
from two runs are never compared. ``slimbench regress`` renders its results with the same table.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from slimbench.bench.regression import (
    DEFAULT_TOLERANCE,
    DEFAULT_Z,
    NOISY_LIMIT,
    Ratio,
    count_changes,
    find_latency_regressions,
    slowdown_limit,
)

__all__ = ["BadInput", "Run", "Row", "Comparison", "COUNT_KEYS", "load_run", "last_two", "resolve_side",
           "compare_runs", "render", "FORMATS"]

COUNT_KEYS = ("params", "macs", "flops", "params_before", "params_after", "macs_before", "macs_after")
FORMATS = ("table", "md", "json")


class BadInput(ValueError):
    """An input that cannot be compared (missing, not benchmark JSON, nothing in common): exit 2."""


@dataclass
class Run:
    """One side of a comparison: the benchmarks of one or more files (shards of one run)."""

    label: str
    cases: dict[str, dict] = field(default_factory=dict)  # case -> extra_info
    commits: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        return {case: {k: int(info[k]) for k in COUNT_KEYS if isinstance(info.get(k), int | float)}
                for case, info in self.cases.items()}

    def ratios(self) -> dict[str, dict[str, Ratio]]:
        return {case: case_ratios(info) for case, info in self.cases.items()}


def case_ratios(info: dict) -> dict[str, Ratio]:
    """The in-run ratios of one benchmark: ``extra_info["ratios"]``, or for files written before
    it existed, the flat ``speedup_<backend>`` values (noise unknown: judged on the tolerance only)."""
    if isinstance(info.get("ratios"), dict):
        return {name: Ratio.from_dict(r) for name, r in info["ratios"].items()}
    return {k: Ratio(float(v), higher_is_better=True) for k, v in info.items()
            if re.fullmatch(r"speedup_\w+", k) and isinstance(v, int | float) and v > 0}


def _case_name(bench: dict) -> str:
    info = bench.get("extra_info") or {}
    return str(info.get("case") or bench.get("name") or bench.get("fullname"))


def load_run(paths: Sequence[str | os.PathLike], label: str | None = None) -> Run:
    """Merge the benchmarks of ``paths`` (shards of one run); a case in two shards is an error."""
    if not paths:
        raise BadInput("no benchmark file given for one side of the comparison")
    run = Run(label or ", ".join(str(p) for p in paths))
    for path in map(Path, paths):
        if not path.is_file():
            raise BadInput(f"benchmark file {path} does not exist (pass files written by "
                           "`pytest suites --benchmark`, or a .benchmarks folder)")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadInput(f"benchmark file {path} is not readable JSON ({error})") from error
        if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
            raise BadInput(f"{path} is not a pytest-benchmark file (no 'benchmarks' list)")
        commit = (data.get("commit_info") or {}).get("id")
        if commit:
            run.commits.append(str(commit)[:12])
        for bench in data["benchmarks"]:
            case = _case_name(bench)
            if case in run.cases:
                raise BadInput(f"case {case} appears twice on one side ({path} and an earlier file); "
                               "pass each shard of a run once")
            run.cases[case] = dict(bench.get("extra_info") or {})
    return run


def _run_number(path: Path) -> tuple[int, float]:
    match = re.match(r"(\d+)_", path.name)
    return (int(match.group(1)) if match else -1, path.stat().st_mtime)


def last_two(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The two newest runs saved under a ``.benchmarks`` folder (by run number, then time)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"{folder} is not a folder; pass BASE and CAND files or a .benchmarks folder")
    files = sorted(folder.rglob("*.json"), key=_run_number)
    if len(files) < 2:
        raise BadInput(f"{folder} holds {len(files)} benchmark file(s); compare needs two runs "
                       "(run `pytest suites --benchmark` twice, or pass BASE and CAND)")
    return files[-2], files[-1]


def resolve_side(spec: str) -> list[Path]:
    """One side given on the command line: a file, a glob, or several of them joined by commas."""
    paths: list[Path] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        matches = sorted(glob.glob(part)) if glob.has_magic(part) else [part]
        if not matches:
            raise BadInput(f"pattern {part!r} matches no benchmark file")
        paths += [Path(m) for m in matches]
    return paths


@dataclass(frozen=True)
class Row:
    case: str
    metric: str
    base: float | None
    cand: float | None
    limit: float | None = None  # slowdown limit for ratios; None for counts
    verdict: str = "ok"  # ok | REGRESSION | noisy | changed (count) | faster

    @property
    def regressed(self) -> bool:
        return self.verdict in ("REGRESSION", "changed")

    def describe(self) -> str:
        if self.limit is None:
            return f"{self.case} {self.metric} {_fmt(self.base)} -> {_fmt(self.cand)}"
        return (f"{self.case} {self.metric} {_fmt(self.base)} -> {_fmt(self.cand)} "
                f"({_change(self)} ; limit {self.limit:.1%} slower)")


@dataclass
class Comparison:
    base: str
    cand: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.regressed]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def judge_ratios(base: dict[str, dict[str, Ratio]], cand: dict[str, dict[str, Ratio]], *,
                 tolerance: float = DEFAULT_TOLERANCE, z: float = DEFAULT_Z) -> list[Row]:
    """One row per (case, ratio) measured on both sides, judged by find_latency_regressions."""
    rows = []
    for case in sorted(set(base) & set(cand)):
        for metric in sorted(set(base[case]) & set(cand[case])):
            old, new = base[case][metric], cand[case][metric]
            limit = slowdown_limit(old, new, tolerance=tolerance, z=z)
            regressed = find_latency_regressions({case: old}, {case: new}, tolerance=tolerance, z=z)
            verdict = ("REGRESSION" if regressed else "noisy" if limit > NOISY_LIMIT
                       else "faster" if old.slowdown_to(new) < -limit else "ok")
            rows.append(Row(case, metric, old.value, new.value, limit, verdict))
    return rows


def judge_counts(base: dict[str, dict[str, int]], cand: dict[str, dict[str, int]]) -> list[Row]:
    """A row per count that moved; counts are deterministic, so any move is reported."""
    common = sorted(set(base) & set(cand))
    changes = count_changes({c: base[c] for c in common}, {c: cand[c] for c in common})
    return [Row(c.case, c.key, c.old, c.new, None, "changed") for c in changes if c.old is not None]


def compare_runs(base: Run, cand: Run, *, tolerance: float = DEFAULT_TOLERANCE, z: float = DEFAULT_Z) -> Comparison:
    common = set(base.cases) & set(cand.cases)
    if not common:
        raise BadInput(f"the two runs share no case ({len(base.cases)} in {base.label}, {len(cand.cases)} in "
                       f"{cand.label}); compare runs of the same suites")
    rows = judge_counts(base.counts(), cand.counts()) + judge_ratios(base.ratios(), cand.ratios(),
                                                                     tolerance=tolerance, z=z)
    notes = []
    only_base, only_cand = sorted(set(base.cases) - common), sorted(set(cand.cases) - common)
    if only_base:
        notes.append(f"{len(only_base)} case(s) only in the base run: {', '.join(only_base[:5])}")
    if only_cand:
        notes.append(f"{len(only_cand)} case(s) only in the candidate run: {', '.join(only_cand[:5])}")
    if not any(r.limit is not None for r in rows):
        notes.append("no in-run ratio on both sides: latency not judged (were both runs made with --benchmark?)")
    return Comparison(base.label, cand.label, rows, notes)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3f}"


def _change(row: Row) -> str:
    if not row.base or row.cand is None:
        return "-"
    return f"{row.cand / row.base - 1:+.1%}"


def _table(comparison: Comparison, tablefmt: str) -> str:
    from tabulate import tabulate

    body = [[r.case, r.metric, _fmt(r.base), _fmt(r.cand), _change(r),
             "-" if r.limit is None else f"{r.limit:.1%}", r.verdict] for r in comparison.rows]
    return tabulate(body, headers=["case", "metric", "base", "candidate", "change", "limit (slower)", "verdict"],
                    tablefmt=tablefmt, disable_numparse=True)


def render(comparison: Comparison, fmt: str = "table", *, title: str = "slimbench compare") -> str:
    """The comparison as a terminal table, GitHub markdown (CI summaries) or JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    regressions = comparison.regressions
    verdict = (f"{len(regressions)} regression(s)" if regressions else "no regression")
    if fmt == "json":
        return json.dumps({"base": comparison.base, "candidate": comparison.cand, "verdict": verdict,
                           "exit_code": comparison.exit_code, "rows": [asdict(r) for r in comparison.rows],
                           "regressions": [r.describe() for r in regressions], "notes": comparison.notes},
                          indent=1)
    lines = [f"## {title}: {verdict}" if fmt == "md" else f"{title}: {verdict}",
             "", f"base: {comparison.base}", f"candidate: {comparison.cand}", ""]
    if fmt == "md":
        lines[2:4] = [f"base: `{comparison.base}`  ", f"candidate: `{comparison.cand}`"]
    lines.append(_table(comparison, "github" if fmt == "md" else "simple"))
    item = "- " if fmt == "md" else ""  # one list item per line in markdown, not one paragraph
    lines += ["", *[f"{item}REGRESSION {r.describe()}" for r in regressions]]
    lines += [f"{item}note: {n}" for n in comparison.notes]
    lines.append(f"{item}Ratios measured within each run (speedup: higher is better; time ratios: lower is better); "
                 "limit = max(tolerance, z x combined standard error, 0.75 x combined spread); "
                 "noisy = a run too noisy to resolve 15 %.")
    return "\n".join(lines).rstrip() + "\n"


def sides_from_args(paths: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """BASE and CAND from the command line: none (./.benchmarks, last two), one folder (last two
    runs in it), or two sides (each a file, a glob, or comma-joined shards)."""
    paths = list(paths)
    if len(paths) == 0:
        paths = [".benchmarks"]
    if len(paths) == 1:
        base, cand = last_two(paths[0])
        return [base], [cand]
    if len(paths) == 2:
        return resolve_side(paths[0]), resolve_side(paths[1])
    raise BadInput(f"compare takes BASE and CAND (or one .benchmarks folder), got {len(paths)} arguments; "
                   "join the shards of one side with commas")
