"""``slimbench regress --against REF``: this tree against a git ref, timed interleaved in one run.

REF is checked out in a temporary ``git worktree`` (removed afterwards, also on error or Ctrl-C).
One worker process per version runs that version's own code (PYTHONPATH = its tree, see
regress_worker.py): it builds the zoo models, plans and prunes them and exports the pruned models
to ONNX. This process then times the two versions' ONNX files against each other in onnxruntime,
interleaved, and asks the two workers in turn (ABBA order) to plan + prune and to profile, so load
on the machine hits both versions alike. Every number reported is a ratio candidate / reference
from this one run, judged with the noise-aware rule of slimbench.bench.regression; counts of the
pruned models (params, MACs) are judged exactly. No absolute time is compared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from slimbench.bench.compare import BadInput, Comparison, judge_counts, judge_ratios
from slimbench.bench.regression import DEFAULT_TOLERANCE, DEFAULT_Z, Ratio, paired_ratio

__all__ = ["Case", "DEFAULT_MODELS", "select_cases", "ref_worktree", "run_regress", "METRIC"]

DEFAULT_MODELS = ("resnet56", "vgg19", "mobilenet_v2")
ILSVRC_MODELS = {"resnet50", "vgg16_bn", "mobilenet_v2", "resnet18", "densenet121"}
KINDS = ("onnx", "plan+prune", "profile")
METRIC = "time cand/ref"
WORKER = Path(__file__).with_name("regress_worker.py")
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"
# glibc adapts its mmap and trim thresholds to what a process freed before, so the page faults that
# plan + prune's large copies cost (CPU time) depend on each worker's history: measured here, the
# same code took 40 ms in one worker and 65 ms in the other. Fixed thresholds make both repeatable.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@dataclass(frozen=True)
class Case:
    kind: str  # onnx: the pruned model in onnxruntime; plan+prune; profile (thop_ext) of the unpruned model
    model: str
    dataset: str
    ratio: float = 0.5

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.model}" + ("" if self.kind == "profile" else f"/{self.ratio:g}")


def select_cases(models: Sequence[str] | None = None, keyword: str | None = None, *, ratio: float = 0.5
                 ) -> list[Case]:
    """Every kind for each model (``name`` or ``name@dataset``), narrowed by a substring of the key."""
    cases = []
    for spec in models or DEFAULT_MODELS:
        name, _, dataset = spec.partition("@")
        dataset = dataset or ("ilsvrc12" if name in ILSVRC_MODELS else "cifar10")
        cases += [Case(kind, name, dataset, ratio) for kind in KINDS]
    if keyword:
        cases = [c for c in cases if keyword in c.key]
        if not cases:
            raise BadInput(f"-k {keyword!r} selects no case; keys look like onnx:resnet56/0.5, "
                           "plan+prune:vgg19/0.5, profile:mobilenet_v2")
    return cases


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode:
        raise BadInput(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


@contextmanager
def ref_worktree(repo: str | os.PathLike, ref: str) -> Iterator[tuple[Path, str]]:
    """REF checked out (detached) in a temporary worktree of ``repo``; removed on any exit."""
    repo = Path(repo)
    try:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except BadInput:
        raise BadInput(f"--against {ref!r} is not a commit of {repo} (a shallow clone lacks history: "
                       "fetch it, e.g. actions/checkout with fetch-depth: 0)") from None
    folder = Path(tempfile.mkdtemp(prefix="slimbench-regress-"))
    path = folder / "ref"
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", str(path), sha)
        yield path, sha
    finally:
        subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


class Worker:
    """One version's worker process; ``ask`` sends a request and waits for its answer."""

    def __init__(self, label: str, root: Path, log: Path):
        self.label, self.root = label, root
        path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
        env = {**STEADY_MALLOC, **os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(WORKER)], cwd=root, env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text().strip().splitlines()[-5:]
            raise RuntimeError(f"the {self.label} worker ({self.root}) stopped: {' | '.join(tail)}")
        return json.loads(line)

    def ready(self) -> None:
        hello = self._read()
        if not Path(hello["slimbench"]).resolve().is_relative_to(self.root.resolve()):
            raise RuntimeError(f"the {self.label} worker imported slimbench from {hello['slimbench']}, not from "
                               f"{self.root}; is another slimbench first on sys.path?")

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"{self.label} version, {request.get('op')} {request.get('model')}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _time_onnx(ref_path: Path, cand_path: Path, x, *, min_time_s: float) -> Ratio:
    from slimbench.bench.export import onnx_session, session_feed
    from slimbench.bench.latency import measure

    runners = {}
    for name, path in (("reference", ref_path), ("candidate", cand_path)):
        session = onnx_session(path, threads=1)
        feed = session_feed(session, (x,))
        runners[name] = (lambda s, f: lambda: s.run(None, f))(session, feed)
    timings = measure(runners, min_time_s=min_time_s, min_rounds=20, sample_ms=5.0, clock=time.thread_time)
    return paired_ratio(timings["candidate"].samples_ms, timings["reference"].samples_ms)


def _time_tool(workers: dict[str, Worker], case: Case, rounds: int) -> Ratio:
    request = dict(op="time", tool=case.kind, model=case.model, dataset=case.dataset, ratio=case.ratio)
    for worker in workers.values():  # warm-up: first calls pay for lazy imports and caches
        worker.ask(**request, budget=0.0)
    seconds: dict[str, list[float]] = {"reference": [], "candidate": []}
    for r in range(rounds):
        order = ("reference", "candidate") if r % 2 == 0 else ("candidate", "reference")
        for name in order:
            seconds[name].append(workers[name].ask(**request)["seconds"])
    return paired_ratio(seconds["candidate"], seconds["reference"])


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) unwinds like Ctrl-C, so the worktree and workers are cleaned up."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_regress(against: str, *, repo: str | os.PathLike = ".", models: Sequence[str] | None = None,
                keyword: str | None = None, rounds: int = 9, min_time_s: float = 1.0,
                tolerance: float = DEFAULT_TOLERANCE, z: float = DEFAULT_Z, log=None) -> Comparison:
    """Time the working tree of ``repo`` (candidate) against commit ``against`` (reference).

    Raises BadInput for what the caller got wrong (unknown ref, empty selection) and RuntimeError
    when a version's worker fails (its message names the version and the request).
    """
    cases = select_cases(models, keyword)
    if rounds < 3 or min_time_s <= 0:
        raise BadInput(f"--rounds must be >= 3 and --min-time > 0, got {rounds}, {min_time_s}")
    root = Path(_git(Path(repo), "rev-parse", "--show-toplevel"))
    head = _git(root, "rev-parse", "--short=12", "HEAD")
    dirty = " + uncommitted changes" if _git(root, "status", "--porcelain", "--untracked-files=no") else ""
    say = log or (lambda message: None)
    started = time.perf_counter()
    with _sigterm_as_interrupt(), ref_worktree(root, against) as (ref_root, sha), \
            tempfile.TemporaryDirectory(prefix="slimbench-regress-onnx-") as scratch:
        scratch = Path(scratch)
        workers: dict[str, Worker] = {}
        try:
            for name, tree in (("reference", ref_root), ("candidate", root)):
                workers[name] = Worker(name, tree, scratch / f"{name}.log")
            import torch  # while the workers import theirs

            from slimbench.models import model_info

            for worker in workers.values():  # both started first: their imports overlap
                worker.ready()
            counts: dict[str, dict] = {"reference": {}, "candidate": {}}
            ratios: dict[str, Ratio] = {}
            for case in cases:
                say(f"{case.key} ...")
                if case.kind == "onnx":
                    paths = {n: scratch / f"{n}-{case.model}-{case.dataset}.onnx" for n in workers}
                    for name, worker in workers.items():
                        counts[name][case.key] = worker.ask(op="export", model=case.model, dataset=case.dataset,
                                                            ratio=case.ratio, path=str(paths[name]))
                    shape = model_info(case.model, case.dataset).input_shape
                    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
                    ratios[case.key] = _time_onnx(paths["reference"], paths["candidate"], x, min_time_s=min_time_s)
                else:
                    ratios[case.key] = _time_tool(workers, case, rounds)
        finally:
            for worker in workers.values():
                worker.close()
    rows = judge_counts(counts["reference"], counts["candidate"])
    rows += judge_ratios({k: {METRIC: Ratio(1.0)} for k in ratios}, {k: {METRIC: r} for k, r in ratios.items()},
                         tolerance=tolerance, z=z)
    notes = [f"{len(cases)} case(s) timed interleaved in {time.perf_counter() - started:.0f} s; "
             "onnx: pruned model in onnxruntime, 1 thread; times are thread CPU time"]
    return Comparison(f"{against} ({sha[:12]})", f"working tree ({head}{dirty})", rows, notes)
