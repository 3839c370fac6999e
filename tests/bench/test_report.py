"""slimbench report on real zoo models with a tiny training budget: rows, formats, files, plot,
paper numbers beside ours, and clear errors for bad arguments."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from slimbench.bench.formats import PAPER, ROW_KEYS, add_derived, paper_note, render, write_atomic
from slimbench.bench.report import ReportSettings, build_report
from slimbench.cli import main

TINY = ["--epochs", "1", "--train-steps", "4", "--finetune-steps", "2", "--train-size", "16",
        "--latency-time", "0.02", "--ratios", "0.5", "--methods", "network_slimming", "--no-progress"]


@pytest.fixture(scope="module")
def report():
    """Two models at once (a residual and a plain one), one ratio, a few training steps."""
    settings = ReportSettings(models=("resnet20", "vgg11"), ratios=(0.5,), methods=("network_slimming",),
                              epochs=1, train_steps=4, finetune_steps=2, latency_time=0.02, progress=False)
    return build_report(settings)


def test_rows_cover_every_model_and_variant_with_sane_values(report):
    keys = [(r["model"], r["method"], r["ratio"]) for r in report.rows]
    assert keys == [("resnet20", "unpruned", 0.0), ("resnet20", "network_slimming", 0.5),
                    ("resnet20", "network_slimming+branch-removal", 0.5),
                    ("vgg11", "unpruned", 0.0), ("vgg11", "network_slimming", 0.5)]
    base = {r["model"]: r for r in report.rows if r["method"] == "unpruned"}
    assert base["resnet20"]["macs"] == pytest.approx(40.55e6, rel=2e-3)  # REFERENCE.md, option A
    assert base["resnet20"]["params"] == 269_722
    for row in report.rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["dataset"] == "digits" and 0.0 <= row["accuracy"] <= 1.0
        assert row["flops"] > row["macs"] > 0
        assert row["latency_torch_ms"] > 0 and row["latency_ort_ms"] > 0
        if row["method"] != "unpruned":
            assert row["macs"] < base[row["model"]]["macs"] and row["params"] < base[row["model"]]["params"]
    assert set(report.gammas) == {"resnet20", "vgg11"} and report.gammas["vgg11"].size > 0
    assert "sparse training" in report.caption and "digits" in report.caption
    assert "fine-tuned 2 steps" in report.caption


def test_json_has_stable_keys_first_and_derived_columns(report):
    data = json.loads(render(report.rows, "json", "cap"))
    assert data["caption"] == "cap"
    for row in data["rows"]:
        assert list(row)[:len(ROW_KEYS)] == list(ROW_KEYS)
    pruned = data["rows"][1]
    assert pruned["speedup_ort"] == pytest.approx(data["rows"][0]["latency_ort_ms"] / pruned["latency_ort_ms"])
    assert pruned["macs_reduction"] == pytest.approx(1 - pruned["macs"] / data["rows"][0]["macs"])


def test_csv_md_and_table_show_every_row(report):
    parsed = list(csv.DictReader(io.StringIO(render(report.rows, "csv"))))
    assert [r["model"] for r in parsed] == [r["model"] for r in report.rows]
    assert list(parsed[0])[:len(ROW_KEYS)] == list(ROW_KEYS)
    md = render(report.rows, "md", "caption text")
    assert md.startswith("caption text") and md.count("\n| resnet20") == 3 and "| ort x" in md
    table = render(report.rows, "table")
    assert "vgg11" in table and "network_slimming+branch-removal" in table
    with pytest.raises(ValueError, match="unknown report format 'xml'"):
        render(report.rows, "xml")


def test_paper_numbers_appear_beside_ours_where_the_paper_has_them():
    assert paper_note("vgg19", "network_slimming", 0.7) == "2.30M / 3.91e+08 FLOPs / err 6.20 % (C10)"
    assert paper_note("vgg19", "optimal_thresholding", 0.7) == ""  # Table 1 is network slimming only
    assert paper_note("resnet56", "network_slimming", 0.5) == ""
    rows = [{"model": "densenet40", "method": m, "ratio": r, "params": p, "macs": 1, "flops": 2, "accuracy": 0.5,
             "dataset": "digits", "latency_torch_ms": 1.0, "latency_ort_ms": 1.0}
            for m, r, p in (("unpruned", 0.0, 10), ("network_slimming+channel-selection", 0.7, 5))]
    derived = add_derived(rows)
    assert derived[1]["paper"].startswith(f"{PAPER[('densenet40', 0.7)][0] / 1e6:.2f}M")
    assert "paper (NS, Table 1)" in render(rows, "table") and "err 5.65 %" in render(rows, "md")


def test_cli_writes_json_atomically_and_a_png_plot(tmp_path, capsys):
    out, plot = tmp_path / "report.json", tmp_path / "report.png"
    assert main(["report", "--models", "resnet20", *TINY, "--format", "json", "--output", str(out),
                 "--plot", str(plot)]) == 0
    assert capsys.readouterr().out == ""  # --output replaces stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["unpruned", "network_slimming", "network_slimming+branch-removal"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert sorted(os.listdir(tmp_path)) == ["report.json", "report.png"]  # no temporary files left


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "r.md"
    write_atomic(path, "old")

    with pytest.raises(TypeError):
        write_atomic(path, 123)  # type: ignore[arg-type]
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["r.md"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "r.md", "x")


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", "resnet57"], "resnet57"),
    (["--ratios", "1.5"], "ratio 1.5 is outside"),
    (["--data", "cifar10"], "cifar10 needs a data folder"),
    (["--data", "mnist=/x"], "mnist"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--output", "/no/such/folder/r.json"], "--output /no/such/folder/r.json: folder"),
    (["--plot", "report.pdf"], "expected a .png"),
    (["--models", "resnet20", "vgg11", "--checkpoint", "w.pt"], "--checkpoint applies to one model"),
])
def test_bad_arguments_fail_fast_with_a_clear_message(argv, message, capsys):
    assert main(["report", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err
