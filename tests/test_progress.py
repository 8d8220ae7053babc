"""relssl.progress and the trainer's progress: bars on a terminal, sparse plain lines elsewhere, never a `\\r`
in a redirected log; `--no-progress` prints the plain lines instead of nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from relssl import progress as progress_module
from relssl.cli import main
from relssl.progress import Progress, format_duration, track
from relssl.train.step_progress import StepProgress


def test_plain_lines_end_with_one_summary(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(30, "features (train)", "img", show=True) as shown:  # captured stderr is no terminal: lines on stdout
        for _ in range(3):
            shown.update(10)
        shown.set_postfix({"loss": "0.25"})
    out = capsys.readouterr().out
    assert "\r" not in out and out.count("\n") == 1
    assert re.fullmatch(r"features \(train\): 30/30 img, \d+\.\ds, \d+ img/s, loss 0\.25\n", out), out


def test_plain_lines_in_between_are_sparse(capsys: pytest.CaptureFixture[str]) -> None:
    list(track(range(5), desc="decode", unit="img", every_s=0.0))  # every_s=0: a line per update
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and lines[0].startswith("decode: 1/5 img") and "ETA" in lines[0]
    list(track(range(1000), desc="decode", unit="img"))  # the default: the summary line only
    assert capsys.readouterr().out.count("\n") == 1


def test_nothing_is_shown_when_off(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(10, "x", show=False) as shown:
        shown.update(10)
    assert list(track([1, 2], show=False)) == [1, 2]
    assert capsys.readouterr() == ("", "")


def test_a_terminal_gets_a_bar_whose_postfix_does_not_force_redraws(capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The old trainer's 15 s interval was defeated by a postfix update that redrew the bar each time."""
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    with Progress(2000, "train", "step") as shown:
        for i in range(2000):
            shown.update()
            shown.set_postfix({"loss": f"{1 / (i + 1):.4g}"})
    err = capsys.readouterr().err
    assert "train" in err and err.count("\r") < 100  # redrawn at tqdm's interval, not 2,000 times


def test_lines_are_forced_on_a_terminal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "stderr_is_terminal", lambda: True)
    with Progress(3, "x", show="lines") as shown:
        shown.update(3)
    assert capsys.readouterr().out.startswith("x: 3/3 it")


def test_step_lines_come_at_a_tenth_of_the_run_and_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    steps = StepProgress(100, 0, batch_size=32, steps_per_epoch=30, show="lines", every_s=3600)
    for step in range(1, 101):
        steps.update()
        if step % 5 == 0 or step == 100:
            steps.flushed(step, {"loss": 1.0 / step}, final=step == 100)
    steps.close()
    lines = capsys.readouterr().out.splitlines()
    assert [int(re.search(r"step (\d+)/", line).group(1)) for line in lines] == [5, 15, 25, 35, 45, 55, 65, 75, 85,
                                                                                   95, 100]
    assert lines[0].startswith("train: step 5/100 (5%), epoch 1/4, loss 0.2, ") and "img/s, ETA" in lines[0]
    assert "epoch 4/4" in lines[-1] and "ETA" not in lines[-1]


def test_durations() -> None:
    assert [format_duration(s) for s in (4.24, 185, 7620)] == ["4.2s", "3m05s", "2h07m"]


def test_no_progress_prints_plain_step_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-steps", "6", "--k", "2", "--batch-size", "16", "--no-progress", "--set",
                 "train.log_every=2", "--set", "eval.linear=false", "--runs-dir", str(tmp_path), "--run-name", "r"]) == 0
    out, err = capsys.readouterr()
    assert "\r" not in out and err == ""  # stderr is left to warnings and errors
    assert "train: step 2/6 (33%), epoch 1/1, loss " in out and "train: step 6/6 (100%)" in out


def test_the_default_run_redirected_to_a_file_reads_well(tmp_path: Path) -> None:
    """`relssl train` (the digits preset, about a minute on 2 CPU cores) with stdout and stderr in one file."""
    log = tmp_path / "log.txt"
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "relssl", "train", "--runs-dir", str(tmp_path / "runs"), "--run-name",
                        "r"], stdout=out, stderr=subprocess.STDOUT, check=True, timeout=900, cwd=tmp_path,
                       env={**_env(), "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert "\r" not in text
    assert log.stat().st_size < 5000, text
    steps = re.findall(r"^train: step (\d+)/315 \(\d+%\), epoch \d+/15, loss [\d.]+, .* img/s", text, re.M)
    assert 5 <= len(steps) <= 15 and steps[-1] == "315", text
    for stage in ("features (train): 1347/1347 img", "features (test): 450/450 img", "linear eval: 100/100 epoch",
                  "linear evaluation (raw features), learned backbone: top-1"):
        assert stage in text, text
    assert (tmp_path / "runs" / "r" / "loss.png").is_file()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
