"""One CLI voice: errors, flags, help, version, signals and outputs, the same in every command."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from slimbench.cli import COMMANDS, command_parser, main, run_guarded

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_version_and_python_dash_m(capsys):
    import slimbench

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"slimbench {slimbench.__version__}"
    out = subprocess.run([sys.executable, "-m", "slimbench", "--version"], env=ENV, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("slimbench ")


def test_every_command_shows_defaults_and_debug_in_help():
    for name in COMMANDS:
        if name in ("compare", "regress"):
            continue
        text = command_parser(name).format_help()
        assert "--debug" in text, name
    assert "(default: 0.5)" in command_parser("prune").format_help()
    train_help = command_parser("train").format_help()
    assert "(default: 160)" in train_help and "-o OUT, --output OUT" in train_help
    assert "--out " not in train_help.replace("--output", "")  # the old spelling is hidden, still accepted
    assert command_parser("train").parse_args(["--model", "vgg11", "--out", "x.pt"]).out == "x.pt"


@pytest.mark.parametrize(("argv", "message"), [
    (["prune", "resnet20", "--ratio", "1.5"], "slimbench prune: error:"),
    (["prune", "resnet20", "--round-to", "0"], "slimbench prune: error:"),
    (["explain", "resnt56"], "did you mean 'resnet56'?"),
    (["profile", "densnet40"], "did you mean 'densenet40'?"),
    (["explain", "nope"], "CIFAR zoo: vgg11"),
    (["train", "--model", "vgg11", "--dataset", "digits", "--data", "/tmp"], "digits is bundled"),
    (["report", "--data", "/tmp", "--no-progress"], "--data /tmp: say which data set the folder holds"),
])
def test_bad_input_is_one_line_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"slimbench {argv[0]}: error: ")


def test_destinations_are_refused_before_the_work(tmp_path, capsys):
    for argv in (["prune", "resnet20", "-o", str(tmp_path)],
                 ["report", "--models", "resnet20", "--no-progress", "--output", str(tmp_path)],
                 ["train", "--model", "resnet20", "--dataset", "digits", "-o", str(tmp_path)]):
        assert main(argv) == 2
        assert "is a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_prune_writes_into_a_symlink_and_a_device(tmp_path, capsys):
    real = tmp_path / "plan.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert main(["prune", "resnet20", "--ratio", "0.3", "--plan-json", str(link)]) == 0
    assert link.is_symlink() and '"masks"' in real.read_text()
    if os.geteuid() == 0:
        node = tmp_path / "null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        assert main(["prune", "resnet20", "--ratio", "0.3", "-o", str(node)]) == 0
        assert stat.S_ISCHR(node.stat().st_mode)


def test_sigterm_cleans_temporary_folders_like_ctrl_c(tmp_path):
    made = []

    def long_work(args):  # what bench/latency does: a temp folder for the ONNX files
        with tempfile.TemporaryDirectory(prefix="slimbench-ort-", dir=tmp_path) as folder:
            made.append(folder)
            # the installed handler, called as the interpreter would on SIGTERM: a real in-process kill
            # can land in a native library's thread (onnxruntime, OpenVINO) and crash there; the real
            # signal is sent to a real `slimbench train` process in tests/training/test_signals.py
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler), "run_guarded installs no SIGTERM handler"
            handler(signal.SIGTERM, None)
            raise AssertionError("SIGTERM did not interrupt")  # pragma: no cover

    assert run_guarded("slimbench report", long_work, None) == 128 + signal.SIGTERM
    assert made and not os.path.exists(made[0]) and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only installed while running


def test_report_results_survive_a_full_disk(tmp_path, monkeypatch, capsys):
    if os.geteuid() == 0:  # a node with /dev/full's numbers: a broken writer could only replace this one
        full = tmp_path / "full"
        os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    else:
        full = Path("/dev/full")
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue))
    argv = ["report", "--models", "resnet20", "--epochs", "1", "--train-steps", "1", "--finetune-steps", "0",
            "--train-size", "16", "--latency-time", "0.01", "--ratios", "0.5", "--methods", "network_slimming",
            "--backends", "torch", "--no-progress", "--format", "csv", "--output", str(full)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "the report's results were saved to" in err
    (saved,) = rescue.glob("slimbench-rescued-*")
    assert str(saved) in err and "\nmodel,method,ratio" in saved.read_text()  # after the caption lines


def test_model_is_spelled_both_ways_in_every_single_model_command(capsys):
    assert main(["explain", "--model", "resnet20"]) == 0
    assert "prunable" in capsys.readouterr().out
    assert command_parser("train").parse_args(["resnet20"]).model_positional == "resnet20"
    assert main(["explain"]) == 2
    assert "which model? slimbench explain MODEL (or --model MODEL)" in capsys.readouterr().err
    assert main(["profile", "resnet20", "--model", "vgg11"]) == 2
    assert "two models given" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--epochs", "0"], "--epochs 0: must be >= 1"),
    (["--lr", "-1"], "--lr -1.0: must be > 0"),
    (["--milestones", "2"], "--milestones 2.0: must be fractions"),
    (["--sparsity=-0.0001"], "--sparsity -0.0001: must be >= 0"),
])
def test_training_errors_name_flags_not_keywords(argv, message, tmp_path, capsys):
    assert main(["train", "resnet20", "--dataset", "digits", "-o", str(tmp_path / "x.pt"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "=" not in err.split("error:")[1].split("must")[0]
    assert list(tmp_path.iterdir()) == []
