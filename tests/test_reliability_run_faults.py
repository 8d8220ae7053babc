"""Faults during a run: SIGKILL in the middle of checkpoint writes, SIGTERM then --resume, and a disk that fills up."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from relssl.cli import main
from relssl.train import checkpoint as checkpoint_module
from relssl.train.checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint
from relssl.train.lock import RunDirLock

QUICK = ["--k", "2", "--batch-size", "16", "--no-progress", "--device", "cpu", "--set", "eval.linear=false"]


def _temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp"))


def _steps(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "train_log.csv").read_text().splitlines()[1:]]


def _rows(run: Path) -> int:
    """Rows in a live run's train_log.csv so far (0 before it exists)."""
    log = run / "train_log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0


# ----------------------------------------------------------------------------- SIGKILL during checkpoint writes
def _keep_saving(run: Path, state: dict[str, Any], step: int) -> None:
    """Write checkpoints of increasing step (from `step`) into `run` until killed (the body of a forked child).

    Only small tensors change: a forked child must not start torch's thread pool (it can hang).
    """
    torch.set_num_threads(1)
    while True:
        step += 1
        state["train_state"]["global_step"] = step
        state["method"]["stamp"] = torch.tensor([step] * 16)
        save_checkpoint(state, run / "last.pt")


def test_sigkill_during_checkpoint_writes_never_leaves_a_broken_last_pt(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    weight = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))  # 4 MB
    state: dict[str, Any] = {"format": "relssl-checkpoint-v1", "train_state": {"global_step": 0},
                             "method": {"weight": weight, "stamp": torch.zeros(16, dtype=torch.int64)}}
    fork = multiprocessing.get_context("fork")  # the child starts at once: torch is already imported
    rng = random.Random(0)
    interrupted = last_step = 0
    for start in range(0, 18_000_000, 1_000_000):  # each writer counts on from its own start
        writer = fork.Process(target=_keep_saving, args=(run, state, start), daemon=True)
        writer.start()
        time.sleep(rng.uniform(0.01, 0.12))
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join()
        interrupted += bool(_temp_files(run))
        if (run / "last.pt").exists():
            saved = torch.load(run / "last.pt", weights_only=True)
            step = saved["train_state"]["global_step"]
            assert step >= last_step
            assert torch.equal(saved["method"]["weight"], weight)
            assert torch.equal(saved["method"]["stamp"], torch.full((16,), step))
            last_step = step
        with RunDirLock(run):  # what the next start of the run does before it writes
            remove_stale_temp_files(run)
        assert _temp_files(run) == []
    assert last_step > 0
    assert interrupted > 0, "no kill landed during a write; the test did not exercise anything"


# ----------------------------------------------------------------------------- SIGTERM, then --resume
def _train_command(runs: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "relssl", "train", "--max-steps", str(steps), *QUICK, "--set", "train.log_every=5",
            "--runs-dir", str(runs), "--run-name", name]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _log_rows(run: Path) -> list[list[str]]:
    """train_log.csv without its elapsed-seconds column (the only one that may differ between runs)."""
    rows = [line.split(",") for line in (run / "train_log.csv").read_text().splitlines()]
    return [row[:2] + row[3:] for row in rows]


def test_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    steps = 700
    full = subprocess.Popen(_train_command(tmp_path, "full", steps), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_train_command(tmp_path, "cut", steps), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _rows(cut) < 20:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be stopped; raise `steps`"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, output[-3000:]
        assert "stopped (SIGTERM) at step" in output
        stopped_at = load_checkpoint(cut)["train_state"]["global_step"]
        assert 20 <= stopped_at < steps
        assert _steps(cut) == list(range(1, stopped_at + 1))
        assert _temp_files(cut) == []

        resumed = subprocess.run([sys.executable, "-m", "relssl", "train", "--resume", str(cut), "--no-progress"],
                                 env=_env(), capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed at epoch {stopped_at // (1347 // 16)}, step {stopped_at}/{steps}" in resumed.stdout
        assert full.wait(timeout=120) == 0
    finally:
        for p in (full, proc):
            if p.poll() is None:
                p.kill()
            p.communicate()
    a, b = load_checkpoint(tmp_path / "full")["method"], load_checkpoint(cut)["method"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _log_rows(cut) == _log_rows(tmp_path / "full")  # every step once, with the same losses


# ----------------------------------------------------------------------------- a full disk
def _enospc_on_call(n: int) -> Callable[..., None]:
    """A torch.save that fails the way a full disk does (part of the file written, then ENOSPC) on call `n`."""
    calls = {"n": 0}
    real_save = torch.save

    def save(obj: object, f: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] != n:
            real_save(obj, f)
            return
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04" + bytes(1000))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


def _train(runs: Path, name: str, steps: int) -> int:
    return main(["train", "--max-steps", str(steps), *QUICK, "--set", "train.checkpoint_every_steps=2",
                 "--set", "train.log_every=1", "--runs-dir", str(runs), "--run-name", name])


def test_a_full_disk_keeps_the_run_resumable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path, "straight", 6) == 0
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", _enospc_on_call(2))  # the checkpoint of step 4
        assert _train(tmp_path, "full", 6) == 2
    err = capsys.readouterr().err
    run = tmp_path / "full"
    assert err.count("\n") == 1 and f"cannot write checkpoint {run / 'last.pt'}" in err and "No space left" in err
    saved = load_checkpoint(run)
    assert saved["train_state"]["global_step"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text()) == saved["config"]
    straight_rows = _log_rows(tmp_path / "straight")
    assert _log_rows(run) == straight_rows[: 1 + 4]  # flushed before the failed checkpoint: intact
    assert _temp_files(run) == []

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _log_rows(run) == straight_rows
    a, b = load_checkpoint(tmp_path / "straight")["method"], load_checkpoint(run)["method"]
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.2 MB tmpfs: room for one checkpoint of the quick digits run, not for the next one beside it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)],
                                 capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot mount a tmpfs here ({err})")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def test_a_real_full_disk_is_one_line_and_keeps_the_last_checkpoint(small_disk: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(small_disk, "r", 6) == 2
    err = capsys.readouterr().err
    run = small_disk / "r"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"cannot write checkpoint {run / 'last.pt'}" in err
    assert load_checkpoint(run)["train_state"]["global_step"] == 2
    assert _temp_files(run) == []
