"""Bad inputs to `relssl train` / `relssl eval` that must end in one line (exit 2) and leave a run directory as it was:
resumes that change the model or do not fit it, repeated log rows after a kill, two processes on one run directory,
settings that used to fail only after pretraining, unusable files given as checkpoints, and failed writes."""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from relssl.cli import main
from relssl.train import checkpoint as checkpoint_module
from relssl.train.checkpoint import load_checkpoint, save_checkpoint

QUICK = ["--k", "2", "--batch-size", "16", "--no-progress", "--device", "cpu", "--set", "train.log_every=2"]
NO_EVAL = ["--set", "eval.linear=false"]
RUN_FILES = ("config.yaml", "last.pt", "train_log.csv")


def _train(runs: Path, name: str, steps: int, *extra: str) -> int:
    """`relssl train` of a few steps on digits into runs/name (no evaluation unless `extra` turns it on)."""
    return main(["train", "--max-steps", str(steps), *QUICK, *NO_EVAL, "--runs-dir", str(runs), "--run-name", name,
                 *extra])


def _snapshot(run: Path) -> dict[str, bytes]:
    """The bytes of the files a failed start must not touch."""
    return {name: (run / name).read_bytes() for name in RUN_FILES if (run / name).exists()}


def _steps(run: Path) -> list[int]:
    return [int(line.split(",")[0]) for line in (run / "train_log.csv").read_text().splitlines()[1:]]


def _one_line(err: str, command: str = "train") -> str:
    """The error line of a failed command, after checking that it is the only line."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"relssl {command}: error: "), err
    return err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run stopped at step 4 (a finished 4-step run: resuming with more steps continues it)."""
    runs = tmp_path_factory.mktemp("stopped")
    assert _train(runs, "r", 4) == 0
    return runs / "r"


@pytest.fixture
def run4(stopped_run: Path, tmp_path: Path) -> Path:
    """This test's own copy of `stopped_run`."""
    import shutil

    return Path(shutil.copytree(stopped_run, tmp_path / "r"))


# ----------------------------------------------------------------------------- command lines that were already right
@pytest.mark.parametrize("args, expected", [
    (["--set", "optim.lr=abc"], "config key 'optim.lr'"),
    (["--set", "optim.lrr=1"], "config key 'optim.lrr': unknown key"),
    (["--set", "optim.lr"], "--set expects KEY=VALUE"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--config", "{tmp}/missing.yaml"], "config file {tmp}/missing.yaml does not exist"),
    (["--config", "{tmp}/bad.yaml"], "config file {tmp}/bad.yaml is not valid YAML"),
    (["--config", "{tmp}/list.yaml"], "top level must be a mapping"),
    (["--resume", "{tmp}/missing"], "checkpoint {tmp}/missing does not exist"),
    (["--resume", "{run}", "--config", "{tmp}/bad.yaml"], "drop --config"),
])
def test_bad_command_lines_are_one_line_and_write_nothing(run4: Path, tmp_path: Path, args: list[str], expected: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("train: {epochs: 3\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    runs = tmp_path / "runs"
    before = _snapshot(run4)
    fill = {"tmp": str(tmp_path), "run": str(run4)}
    assert main(["train", *[a.format(**fill) for a in args], "--runs-dir", str(runs), "--no-progress"]) == 2
    assert expected.format(**fill) in _one_line(capsys.readouterr().err)
    assert not runs.exists() and _snapshot(run4) == before


# ----------------------------------------------------------------------------- defect 1: resume checks first
@pytest.mark.parametrize("override, key", [
    (["--method", "simclr"], "method"),
    (["--backbone", "resnet8"], "backbone.name"),
    (["--set", "relational.aggregation=max"], "relational.aggregation"),
    (["--k", "3"], "relational.k"),
    (["--set", "optim.name=sgd"], "optim.name"),
])
def test_a_resume_that_changes_the_model_is_one_line_and_writes_nothing(
        run4: Path, override: list[str], key: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(run4)
    assert main(["train", "--resume", str(run4), "--max-steps", "6", "--no-progress", *override]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"'{key}'" in err
    assert _snapshot(run4) == before


def test_a_resume_may_change_the_schedule_and_evaluation(run4: Path) -> None:
    assert main(["train", "--resume", str(run4), "--max-steps", "6", "--no-progress", "--set", "eval.epochs=1",
                 "--set", "train.log_every=3"]) == 0
    assert load_checkpoint(run4)["train_state"]["global_step"] == 6
    assert _steps(run4) == list(range(1, 7))


def test_a_checkpoint_that_does_not_fit_the_model_is_refused_before_anything_is_written(
        run4: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = load_checkpoint(run4)
    name = next(k for k in ckpt["method"] if k.endswith("weight"))
    ckpt["method"][name] = torch.zeros(3, 3)  # another shape than the model's
    save_checkpoint(ckpt, run4 / "last.pt")
    before = _snapshot(run4)
    assert main(["train", "--resume", str(run4), "--max-steps", "6", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "does not fit" in err and str(run4) in err
    assert _snapshot(run4) == before


# ----------------------------------------------------------------------------- defect 2: log rows, the lock
def test_resume_keeps_each_log_step_once_after_a_kill(run4: Path) -> None:
    """A kill between a log flush and the next checkpoint leaves rows past the checkpoint's step."""
    with (run4 / "train_log.csv").open("a") as fh:
        fh.write("5,0,0.100,0.5,50\r\n6,0,0.200,0.5,50\r\n7,0,0.3")  # the last row cut mid-write
    assert main(["train", "--resume", str(run4), "--max-steps", "8", "--no-progress"]) == 0
    assert _steps(run4) == list(range(1, 9))


@pytest.fixture
def held_lock(run4: Path) -> Iterator[Path]:
    """The run directory's lock held through another open file description, as another process would."""
    with (run4 / ".lock").open("a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.truncate(0)
        fh.write("4242\n")
        fh.flush()
        yield run4
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def test_a_second_process_on_a_run_directory_is_refused(held_lock: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = held_lock
    (run / ".last.pt.abcd1234.tmp").write_bytes(b"a live writer's file")
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--max-steps", "6", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"run directory {run} is in use by another relssl process (pid 4242)" in err
    assert _snapshot(run) == before
    assert (run / ".last.pt.abcd1234.tmp").exists()  # only the lock's holder may clear temporary files


def test_a_fresh_run_holds_the_lock_while_it_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relssl.train.trainer import Trainer

    seen: list[int] = []
    fit = Trainer.fit

    def probing_fit(self: Trainer) -> object:
        assert self.run_dir is not None
        with (self.run_dir / ".lock").open("a+") as fh:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fh.seek(0)
            seen.append(int(fh.read()))
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", probing_fit)
    assert _train(tmp_path, "fresh", 2) == 0
    assert seen == [os.getpid()]
    with (tmp_path / "fresh" / ".lock").open("a+") as fh:  # released at the end
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


# ----------------------------------------------------------------------------- defect 3: checks before step 1
@pytest.mark.parametrize("args, key", [
    (["--seed", "-1"], "'seed'"),
    (["--seed", str(2**32)], "'seed'"),
    (["--set", "data.eval_test_split=validation"], "'data.eval_test_split'"),
    (["--set", "data.eval_train_split=unlabeled"], "'data.eval_train_split'"),
])
def test_bad_settings_fail_before_training(tmp_path: Path, args: list[str], key: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    assert main(["train", "--max-steps", "2", *QUICK, "--runs-dir", str(runs), "--set", "eval.epochs=1", *args]) == 2
    assert key in _one_line(capsys.readouterr().err)
    assert not runs.exists()


def test_an_unlabelled_evaluation_split_fails_before_training(tmp_path: Path, png: Callable[..., None],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    root, runs = tmp_path / "images", tmp_path / "runs"
    for i in range(8):
        png(root / "train" / f"c{i % 2}" / f"{i}.png", 30 * i, (16, 16))
        png(root / "test" / f"{i}.png", 30 * i, (16, 16))  # loose images: an unlabelled split
    assert main(["train", "--max-steps", "2", *QUICK, "--batch-size", "4", "--dataset", "imagefolder",
                 "--data-root", str(root), "--runs-dir", str(runs), "--set", "eval.epochs=1"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "'data.eval_test_split'" in err and "unlabelled" in err
    assert not runs.exists()


# ----------------------------------------------------------------------------- defect 4: user errors, not bugs
def test_a_runs_dir_under_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert _train(tmp_path / "file" / "runs", "r", 2) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(tmp_path / "file" / "runs") in err and "--runs-dir" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_runs_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        assert _train(runs, "r", 2) == 2
    finally:
        runs.chmod(0o755)
    assert "--runs-dir" in _one_line(capsys.readouterr().err)
    assert not list(runs.iterdir())


@pytest.fixture
def plain_state_dict(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    return path


@pytest.mark.parametrize("command", [["train", "--resume"], ["eval", "linear", "--no-progress", "--checkpoint"]])
def test_a_plain_state_dict_as_checkpoint_is_one_line(plain_state_dict: Path, command: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, str(plain_state_dict)]) == 2
    err = _one_line(capsys.readouterr().err, " ".join(c for c in command[:2] if not c.startswith("-")))
    assert str(plain_state_dict) in err and "not a relssl training checkpoint" in err


@pytest.mark.parametrize("command", [["train", "--resume"], ["eval", "linear", "--no-progress", "--checkpoint"]])
def test_a_truncated_checkpoint_is_one_line(run4: Path, command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    data = (run4 / "last.pt").read_bytes()
    (run4 / "last.pt").write_bytes(data[: len(data) // 2])
    before = _snapshot(run4)
    assert main([*command, str(run4)]) == 2
    err = _one_line(capsys.readouterr().err, " ".join(c for c in command[:2] if not c.startswith("-")))
    assert f"cannot load checkpoint {run4 / 'last.pt'} safely" in err
    assert _snapshot(run4) == before


@pytest.mark.parametrize("missing", ["config", "train_state", "method", "optimizer"])
@pytest.mark.parametrize("command", [["train", "--resume"],
                                     ["eval", "linear", "--no-progress", "--epochs", "1", "--checkpoint"]])
def test_a_partial_checkpoint_is_one_line(run4: Path, missing: str, command: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = load_checkpoint(run4)
    del ckpt[missing]
    partial = run4.parent / "partial.pt"
    torch.save(ckpt, partial)
    code = main([*command, str(partial)])
    if command[0] == "eval" and missing in ("optimizer", "train_state"):  # evaluation reads the config and weights
        assert code == 0
        return
    assert code == 2
    err = _one_line(capsys.readouterr().err, " ".join(c for c in command[:2] if not c.startswith("-")))
    assert str(partial) in err and f"'{missing}'" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_safetensors_file_is_one_line(digits_run: Path, damage: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = digits_run / "backbone.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    assert main(["eval", "linear", "--checkpoint", str(path), "--no-progress", "--epochs", "1"]) == 2
    err = _one_line(capsys.readouterr().err, "eval linear")
    assert str(path) in err


def _failing_save(error: BaseException, fail_on: int) -> Callable[..., None]:
    """A torch.save that writes part of the file, then fails the way a full disk does, on call `fail_on`."""
    calls = {"n": 0}
    real_save = torch.save

    def save(obj: object, f: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] < fail_on:
            real_save(obj, f)
            return
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 partial")
        raise error

    return save


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                   RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 2112 vs 2006")])
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(
        run4: Path, error: BaseException, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = (run4 / "last.pt").read_bytes()
    monkeypatch.setattr(checkpoint_module.torch, "save", _failing_save(error, fail_on=1))
    assert main(["train", "--resume", str(run4), "--max-steps", "6", "--no-progress"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert str(run4 / "last.pt") in err and "--resume" in err
    assert (run4 / "last.pt").read_bytes() == before
    assert not [p.name for p in run4.iterdir() if p.name.endswith(".tmp")]


def test_a_bug_in_the_checkpoint_writer_keeps_its_traceback(run4: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(checkpoint_module.torch, "save", _failing_save(TypeError("a bug"), fail_on=1))
    assert main(["train", "--resume", str(run4), "--max-steps", "6", "--no-progress"]) == 1
    assert "Traceback" in capsys.readouterr().err


# ----------------------------------------------------------------------------- defect 5: temporary files
def test_stale_checkpoint_temporary_files_are_removed_on_resume(run4: Path) -> None:
    stale = [".last.pt.k2j4_x9a.tmp", ".epoch0003.pt.abcdefgh.tmp", ".backbone.safetensors.zz99yy88.tmp",
             ".config.yaml.a1b2c3d4.tmp", ".train_log.csv.qwertyui.tmp", "metrics.json.tmp"]
    kept = ["notes.tmp", ".last.pt.tmp", "last.pt.abcdefgh.tmp", ".mine.abcdefgh.tmp"]
    for name in stale + kept:
        (run4 / name).write_bytes(b"x" * 100)
    assert main(["train", "--resume", str(run4), "--max-steps", "5", "--no-progress"]) == 0
    left = {p.name for p in run4.iterdir()}
    assert not left & set(stale)
    assert set(kept) <= left
