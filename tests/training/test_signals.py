"""SIGTERM (schedulers, ``docker stop``) takes Ctrl-C's clean-up path in a real ``slimbench train``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_mid_epoch_leaves_the_last_whole_checkpoint_and_no_temporary(tmp_path):
    ckpt = tmp_path / "run.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "slimbench", "train", "--model", "resnet20", "--dataset", "digits",
           "--input-size", "16", "--epochs", "200", "--batch-size", "16", "--no-progress", "-o", str(ckpt)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ckpt.exists():  # the first epoch is whole on disk; the second one is running
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no hidden .run.pt.*.tmp
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] >= 1 and state["epoch"] < 200 and state["seed"] == 0
