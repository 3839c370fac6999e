"""`slimbench train` / `slimbench finetune` and torchrun DDP on CPU (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import slimbench
from slimbench.cli import main
from slimbench.cli.train import state_digest
from slimbench.models import get_model

SMOKE = ["--dataset", "digits", "--input-size", "16", "--epochs", "1", "--steps-per-epoch", "2", "--no-progress"]


def test_train_then_prune_then_finetune_cli(tmp_path, capsys):
    sparse = tmp_path / "sparse.pt"
    assert main(["train", "--model", "resnet20", *SMOKE, "--out", str(sparse)]) == 0
    assert "test_top1=" in capsys.readouterr().out
    model = get_model("resnet20", "digits", checkpoint=sparse)
    plan = slimbench.plan(model, (3, 16, 16), ratio=0.5)
    pruned_path = tmp_path / "pruned.pt"
    slimbench.save_pruned_model(slimbench.prune(model, plan=plan), pruned_path, plan=plan)
    tuned = tmp_path / "tuned.pt"
    assert main(["finetune", "--model", "resnet20", "--pruned", str(pruned_path), *SMOKE, "--out", str(tuned)]) == 0
    reloaded = get_model("resnet20", "digits", checkpoint=tuned)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())
    state = torch.load(tuned, weights_only=True)
    assert state["epoch"] == 1 and "plan" in state
    # resume continues the same file for one more epoch
    assert main(["finetune", "--model", "resnet20", "--pruned", str(pruned_path), *SMOKE[:4], "--epochs", "2",
                 "--steps-per-epoch", "1", "--no-progress", "--out", str(tuned), "--resume"]) == 0
    assert torch.load(tuned, weights_only=True)["epoch"] == 2


def test_cli_bad_inputs_write_nothing(tmp_path, capsys):
    out = tmp_path / "never.pt"
    plain = tmp_path / "plain.pt"
    torch.save(get_model("resnet20", "digits").state_dict(), plain)
    cases = [
        (["train", "--model", "resnet20", "--dataset", "cifar10", "--data", str(tmp_path / "absent"), "-o", str(out)],
         "slimbench train: error: cifar10: data folder", "cifar-10-batches-py"),
        (["train", "--model", "resnet21", *SMOKE, "--out", str(out)], "unknown model 'resnet21'", "resnet20"),
        (["finetune", "--model", "resnet20", "--pruned", str(plain), *SMOKE, "--output", str(out)],
         "slimbench finetune: error: --pruned", "no pruning plan"),
        (["train", "--model", "resnet20", *SMOKE, "-o", str(out), "--resume"], "--resume: there is no checkpoint",
         "drop --resume"),
        (["train", "--model", "resnet20", *SMOKE, "--data", str(tmp_path)], "--data", "digits"),
    ]
    for argv, *messages in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert all(m in err for m in messages) and "Traceback" not in err, err
    assert not out.exists()


def test_existing_output_names_the_flags(tmp_path, capsys):
    out = tmp_path / "run.pt"
    out.write_bytes(b"keep me")
    assert main(["train", "--model", "resnet20", *SMOKE, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "--resume" in err and "--overwrite" in err and "resume=True" not in err
    assert out.read_bytes() == b"keep me"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        main(["--debug", "explain", "resnt56"])
    with pytest.raises(ValueError, match="--resume"):
        main(["train", "--model", "resnet20", *SMOKE, "-o", str(tmp_path / "x.pt"), "--resume", "--debug"])


def test_seed_is_set_before_model_init_so_runs_repeat(tmp_path, capsys):
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    for path, seed in ((a, "0"), (b, "0"), (c, "1")):
        assert main(["train", "--model", "resnet20", *SMOKE, "--seed", seed, "--deterministic", "-o", str(path)]) == 0
    first, second, other = (torch.load(p, weights_only=True) for p in (a, b, c))
    assert first["seed"] == 0 and first["deterministic"] is True and other["seed"] == 1
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    assert any(not torch.equal(v, other["state_dict"][k]) for k, v in first["state_dict"].items())


def test_torchrun_two_ranks_on_cpu_end_identical(tmp_path):
    digests, ckpt = tmp_path / "digests", tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port, so parallel runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           "-m", "slimbench.training", "--model", "resnet20", *SMOKE, "--steps-per-epoch", "3",
           "--batch-size", "16", "--out", str(ckpt), "--write-rank-digest", str(digests)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = {json.loads(p.read_text())["rank"]: json.loads(p.read_text())["sha256"] for p in digests.iterdir()}
    assert set(ranks) == {0, 1} and ranks[0] == ranks[1]
    trained = get_model("resnet20", "digits", checkpoint=ckpt)  # written by rank 0 only
    assert state_digest(trained) == ranks[0]
    torch.manual_seed(0)
    assert state_digest(get_model("resnet20", "digits")) != ranks[0]  # the weights did move
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.pt", "digests"]
