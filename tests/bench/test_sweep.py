"""The wide sweep's machinery on a fixed quick sample of real torchvision / timm models.

The full sweep (`make sweep`) is not part of `make test`; this runs its code path end to end on five
real models (through the worker process), and each classification branch on a real model.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

import slimbench
from slimbench.bench import sweep, sweep_case
from slimbench.bench.sweep import CATEGORIES, Case, render_markdown, run_case, run_sweep, summary_counts

RESNET18 = Case("torchvision", "resnet18", "torchvision")


def test_sample_sweep_end_to_end(tmp_path):
    out, doc = tmp_path / "results.json", tmp_path / "compatibility.md"
    assert sweep.main(["--sample", "--out", str(out), "--doc", str(doc), "--timeout", "240"]) == 0
    data = json.loads(out.read_text())
    records = {r["model"]: r for r in data["records"]}
    assert sorted(records) == sorted(name for _, name in sweep.SAMPLE)
    assert data["summary"] == summary_counts(data["records"])
    for r in records.values():
        assert r["category"] in CATEGORIES
        assert r["category"] not in ("WRONG", "CRASH", "TIMEOUT", "skipped"), r
        if r["category"].startswith("pruned"):
            assert r["error"] <= 1e-4 and 0 < r["kept"] <= 1 and r["macs_after"] <= r["macs_before"]
        else:
            assert r["reason"]
        assert r["has_bn"] is True and r["input"][0] == 3
    # a plain ResNet loses at least a fifth of its MACs at ratio 0.5
    assert records["resnet18"]["category"] == "pruned" and records["resnet18"]["kept"] < 0.8
    text = doc.read_text()
    assert text.startswith("# Compatibility") and "| pruned | " in text and "| resnet18 | torchvision |" in text


def test_empty_doc_writes_no_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: [])
    assert sweep.main(["--models", "resnet18", "--no-timm", "--out", "results.json", "--doc", ""]) == 0
    assert list(tmp_path.iterdir()) == []  # no table (it used to try writing one over ".")


@pytest.fixture
def resnet18_baseline():
    return run_case(RESNET18)


def test_plan_options_reach_the_plan(resnet18_baseline):
    keep = run_case(RESNET18, plan_options={"residual": "keep"})
    shared = run_case(RESNET18, plan_options={"residual": "shared"})
    assert keep["category"] == shared["category"] == "pruned"
    assert shared["kept"] < keep["kept"] - 0.1  # coupled residual groups pruned too


def test_wrong_outputs_are_caught(monkeypatch, resnet18_baseline):
    real = slimbench.prune

    def off_by_a_little(model, x, **kw):
        pruned = real(model, x, **kw)
        with torch.no_grad():
            pruned.fc.bias.add_(1.0)
        return pruned

    monkeypatch.setattr(slimbench, "prune", off_by_a_little)
    record = run_case(RESNET18)
    assert record["category"] == "WRONG" and "differ" in record["reason"]
    assert resnet18_baseline["category"] == "pruned"


def test_changing_the_callers_model_is_wrong(monkeypatch):
    real = slimbench.prune

    def mutating(model, x, **kw):
        model.add_module("extra", torch.nn.Identity())
        return real(model, x, **kw)

    monkeypatch.setattr(slimbench, "prune", mutating)
    record = run_case(RESNET18)
    assert record["category"] == "WRONG" and "caller's model" in record["reason"]


def test_unexpected_exceptions_crash_deliberate_ones_refuse(monkeypatch):
    def index_error(model, x, **kw):
        return [][1]

    monkeypatch.setattr(slimbench, "prune", index_error)
    record = run_case(RESNET18)
    assert record["category"] == "CRASH" and record["reason"].startswith("prune: IndexError")

    def refuses(model, x, **kw):  # a ValueError raised by slimbench's own code is a refusal
        from slimbench.core.inputs import as_example_inputs

        return as_example_inputs((0, 3))

    monkeypatch.setattr(slimbench, "prune", refuses)
    record = run_case(RESNET18)
    assert record["category"] == "refused" and "non-positive" in record["reason"]

    def torch_error(model, x, **kw):  # the same type raised from deep inside torch is a crash
        return torch.zeros(2) @ torch.zeros(3)

    monkeypatch.setattr(slimbench, "prune", torch_error)
    assert run_case(RESNET18)["category"] == "CRASH"

    def numpy_error_at_a_slimbench_line(model, x, **kw):  # not a raise statement: an internal error leaking
        import numpy as np

        from slimbench.pruning.criteria import global_threshold

        return global_threshold(np.ones(3), np.ones(3, bool), "half")

    monkeypatch.setattr(slimbench, "prune", numpy_error_at_a_slimbench_line)
    record = run_case(RESNET18)
    assert record["category"] == "CRASH" and record["error"].startswith("criteria.py:")


def test_pruned_model_that_fails_to_run_is_a_crash(monkeypatch):
    real = slimbench.prune

    def broken(model, x, **kw):
        pruned = real(model, x, **kw)
        pruned.fc = torch.nn.Linear(3, 3)
        return pruned

    monkeypatch.setattr(slimbench, "prune", broken)
    record = run_case(RESNET18)
    assert record["category"] == "CRASH" and record["reason"].startswith("pruned model fails to run")


def test_too_large_and_unbuildable_models_are_skipped():
    assert run_case(RESNET18, max_params=1000)["category"] == "skipped"
    # a model whose builder cannot run on the meta device is built for real, not skipped
    regnet = run_case(Case("torchvision", "regnet_x_400mf", "torchvision"), max_params=10**9)
    assert regnet["category"] == "pruned"
    record = run_case(Case("torchvision", "no_such_model", "torchvision"))
    assert record["category"] == "skipped" and record["reason"].startswith("model:")


def test_timeouts_are_reported_and_the_worker_restarted():
    start = time.perf_counter()
    records = run_sweep([RESNET18, RESNET18], timeout=0.2, progress=False)
    assert [r["category"] for r in records] == ["TIMEOUT", "TIMEOUT"]
    assert time.perf_counter() - start < 30


def test_timm_selection_covers_every_family_smallest_first(monkeypatch):
    catalogue = {
        "a_big": {"family": "a", "bn": 3, "params": 900}, "a_small": {"family": "a", "bn": 3, "params": 100},
        "a_small_384": {"family": "a", "bn": 3, "params": 100}, "a_mid": {"family": "a", "bn": 3, "params": 500},
        "b_only": {"family": "b", "bn": 1, "params": 50}, "vit": {"family": "c", "bn": 0, "params": 10},
    }
    monkeypatch.setattr(sweep, "_timm_catalogue", lambda cache: catalogue)
    names = [c.name for c in sweep.timm_cases(min_total=2)]
    assert names == ["a_small", "b_only"]  # one per family first; no BN, no pick
    names = [c.name for c in sweep.timm_cases(min_total=10)]
    assert names == ["a_small", "b_only", "a_mid", "a_big"]  # same-size variants are skipped


def test_markdown_groups_failures_and_counts():
    records = [
        {"model": "m1", "source": "timm", "family": "x", "category": "pruned", "kept": 0.4, "input": [3, 64, 64],
         "has_bn": True, "reason": ""},
        {"model": "m2", "source": "timm", "family": "x", "category": "refused", "has_bn": True,
         "reason": "prune: ValueError: conv 'a.b' is called twice (3 channels)"},
        {"model": "m3", "source": "timm", "family": "y", "category": "refused", "has_bn": True,
         "reason": "prune: ValueError: conv 'c.d' is called twice (5 channels)"},
    ]
    text = render_markdown(records)
    assert "| pruned | 1 |" in text and "| refused | 2 |" in text
    assert "| refused | 2 | prune: ValueError: conv '…' is called twice (N channels) | m2, m3 |" in text
    assert "| m1 | timm / x | 3x64x64 | 40.0 % | pruned |  |" in text
    assert sweep_case.PRUNED_ENOUGH == 0.2


def test_named_models_run_as_given_without_the_catalogue_and_no_doc(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep, "_timm_catalogue", lambda cache: pytest.fail("the catalogue was built"))
    seen = []

    def fake_sweep(cases, **kw):
        seen.extend(cases)
        records = [{"model": c.name, "source": c.source, "family": c.family, "category": "pruned"} for c in cases]
        kw["on_record"](records)
        return records

    monkeypatch.setattr(sweep, "run_sweep", fake_sweep)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r.json"
    assert sweep.main(["--models", "test_byobnet,resnet18", "--doc", "", "--out", str(out)]) == 0
    assert [(c.source, c.name, c.family) for c in seen] == [("timm", "test_byobnet", "byobnet"),
                                                             ("torchvision", "resnet18", "torchvision")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # --doc '': no markdown written
    commit = json.loads(out.read_text())["meta"]["commit"]  # which source produced the table
    assert commit == "unknown" or len(commit.split("+")[0]) >= 7
