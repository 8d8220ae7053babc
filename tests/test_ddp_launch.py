"""`relssl train` under torchrun with two gloo ranks: SIGTERM stops every rank at a checkpoint, and
`--resume` on two ranks ends with exactly the weights of an uninterrupted two-rank run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this PyTorch build",
)

STEPS = 300  # long enough (several seconds) for the signal to land mid-run
TRAIN = ["--max-steps", str(STEPS), "--k", "4", "--batch-size", "64", "--no-progress",
         "--set", "train.log_every=5", "--set", "eval.linear=false", "--device", "cpu"]


def torchrun(*args: str) -> list[str]:
    """The command line of a two-process torchrun launch of `python -m relssl`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "relssl", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["method"]


def _rows(run: Path) -> int:
    log = run / "train_log.csv"
    return len(log.read_text().splitlines()) - 1 if log.exists() else 0


def test_sigterm_then_resume_on_two_ranks_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = subprocess.run(torchrun("train", *TRAIN, "--runs-dir", str(tmp_path), "--run-name", "full"),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 2  # rank 0's log line, and the CLI's closing line, once each

    proc = subprocess.Popen(torchrun("train", *TRAIN, "--runs-dir", str(tmp_path), "--run-name", "cut"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while _rows(cut) < 20 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be interrupted; raise STEPS"
    proc.send_signal(signal.SIGTERM)  # what SLURM sends before pre-emption; torchrun passes it on
    output, _ = proc.communicate(timeout=120)
    stopped_at = torch.load(cut / "last.pt", weights_only=True)["train_state"]["global_step"]
    assert 20 <= stopped_at < STEPS, output[-3000:]
    assert "stopped (SIGTERM) at step" in output
    assert not list(cut.glob("*.tmp")) and not list(cut.glob(".*.tmp"))

    resumed = subprocess.run(torchrun("train", "--resume", str(cut), "--no-progress"),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch" in resumed.stdout
    a, b = _weights(full), _weights(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [int(line.split(",")[0]) for line in (cut / "train_log.csv").read_text().splitlines()[1:]]
    full_steps = [int(line.split(",")[0]) for line in (full / "train_log.csv").read_text().splitlines()[1:]]
    assert steps == full_steps and steps[-1] == STEPS  # rows past the checkpoint were cut back: no step repeats


def test_a_global_batch_that_does_not_split_over_the_ranks_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(torchrun("train", "--batch-size", "33", "--runs-dir", str(tmp_path), "--no-progress"),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "relssl train: error: train.batch_size=33 is the global batch of a step; it must divide evenly " \
           "over the 2 processes" in done.stderr
    assert "Traceback" not in done.stderr.split("relssl train: error")[0][-2000:]
    assert not list(tmp_path.iterdir())  # nothing written
