"""slimbench regress on real git repositories in tmp_path: a slowdown committed to a copy of this
repository (an extra op in the model the ONNX export writes) is flagged; the same commit against
itself is not, 10 runs out of 10; the temporary worktree goes away on success, error and Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimbench.bench.compare import BadInput
from slimbench.bench.regress import ref_worktree, run_regress, select_cases
from slimbench.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(models=["resnet20"], keyword="onnx", min_time_s=0.2)

# The throwaway commit: export_onnx writes the model plus a second pass at half resolution (about
# a quarter more work) into the ONNX graph. Params and MACs of the pruned model do not change.
SLOW_EXPORT = '''

class _ExtraPass(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x) + 0.0 * self.model(x[:, :, ::2, ::2])
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _worktrees(repo: Path) -> int:
    return _git(repo, "worktree", "list").count("\n")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git copy of this project's code: commit 1 as it is, commit 2 with the slower export."""
    path = tmp_path_factory.mktemp("repo")
    for package in ("slimbench", "thop_ext"):
        shutil.copytree(ROOT / package, path / package, ignore=shutil.ignore_patterns("__pycache__"))
    _git(path, "init", "-q")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "empty")
    _git(path, "add", ".")
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    export = path / "slimbench" / "bench" / "export.py"
    text = export.read_text()
    line = "    frozen = copy.deepcopy(model).eval()\n    names ="
    assert line in text
    export.write_text(text.replace(line, "    frozen = _ExtraPass(copy.deepcopy(model).eval())\n    names =")
                      + SLOW_EXPORT)
    _git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "slower export")
    return path


def test_committed_slowdown_is_flagged(repo):
    comparison = run_regress("HEAD~1", repo=repo, **TINY)
    assert comparison.exit_code == 1
    (row,) = comparison.regressions
    assert (row.case, row.metric, row.verdict) == ("onnx:resnet20/0.5", "time cand/ref", "REGRESSION")
    assert row.cand > 1.15
    assert not [r for r in comparison.rows if r.limit is None]  # counts did not move: latency caught it
    assert _worktrees(repo) == 1


@pytest.mark.slow
def test_same_commit_against_itself_is_clean_10_runs_out_of_10(repo):
    ratios = []
    for run in range(10):
        comparison = run_regress("HEAD", repo=repo, **TINY)
        assert comparison.exit_code == 0, f"false alarm in run {run}: {comparison.regressions}"
        ratios.append(comparison.rows[-1].cand)
    assert max(abs(r - 1) for r in ratios) < 0.10, ratios


def test_every_kind_against_itself_and_cli_markdown(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    code = main(["regress", "--against", "HEAD", "--models", "resnet20", "--rounds", "3", "--min-time", "0.2",
                 "--format", "md"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("## slimbench regress --against HEAD: no regression")
    for key in ("onnx:resnet20/0.5", "plan+prune:resnet20/0.5", "profile:resnet20"):
        assert f"| {key}" in out
    assert _worktrees(repo) == 1


def test_unknown_ref_and_empty_selection_exit_2(repo, capsys):
    assert main(["regress", "--against", "no-such-ref", "--repo", str(repo)]) == 2
    assert "no-such-ref" in capsys.readouterr().err
    assert main(["regress", "--against", "HEAD", "--repo", str(repo), "-k", "nothing"]) == 2
    assert "selects no case" in capsys.readouterr().err


def test_worktree_removed_when_the_block_fails(repo):
    with pytest.raises(RuntimeError, match="boom"), ref_worktree(repo, "HEAD~1") as (path, sha):
        assert (path / "slimbench" / "bench" / "export.py").is_file()
        assert "_ExtraPass" not in (path / "slimbench" / "bench" / "export.py").read_text()
        raise RuntimeError("boom")
    assert not path.exists() and _worktrees(repo) == 1


def test_broken_reference_is_reported_and_cleaned_up(repo, tmp_path, capsys):
    broken = tmp_path / "broken"
    _git(repo, "worktree", "add", "-q", "--detach", str(broken), "HEAD")
    (broken / "slimbench" / "__init__.py").write_text("raise ImportError('this version does not import')\n")
    _git(broken, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "broken")
    sha = _git(broken, "rev-parse", "HEAD").strip()
    _git(repo, "worktree", "remove", "--force", str(broken))
    code = main(["regress", "--against", sha, "--repo", str(repo), "--models", "resnet20", "-k", "onnx"])
    err = capsys.readouterr().err
    assert code == 2
    assert "the reference worker" in err and "this version does not import" in err
    assert _worktrees(repo) == 1


def test_ctrl_c_removes_the_worktree(repo):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "slimbench", "regress", "--against", "HEAD", "--repo", str(repo),
                             "--models", "resnet20"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _worktrees(repo) == 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _worktrees(repo) == 2, "the worktree never appeared"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert _worktrees(repo) == 1


def test_default_case_set_and_keyword():
    keys = [c.key for c in select_cases()]
    assert keys[:3] == ["onnx:resnet56/0.5", "plan+prune:resnet56/0.5", "profile:resnet56"]
    assert {c.dataset for c in select_cases(["mobilenet_v2"])} == {"ilsvrc12"}
    assert [c.key for c in select_cases(["vgg19@cifar100"], "profile")] == ["profile:vgg19"]
    with pytest.raises(BadInput, match="selects no case"):
        select_cases(keyword="nothing")
