"""The command line's one error boundary: user errors are one line (exit 2), bugs keep their traceback (exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from relssl import errors
from relssl.cli import main
from relssl.losses import focal_bce
from relssl.methods import relational

QUICK = ["--epochs", "1", "--k", "2", "--batch-size", "32", "--no-progress", "--set", "eval.linear=false"]


def test_a_shape_mismatch_deep_in_a_loss_is_a_bug_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
        return focal_bce(logits, targets[:-1], gamma=gamma)  # the real loss sees mismatched shapes

    monkeypatch.setattr(relational, "focal_bce", broken)
    assert main(["train", *QUICK, "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "ValueError: logits" in err and "differ in size" in err  # raised inside relssl.losses
    assert "relssl/losses/relational.py" in err
    assert "internal error: this is a bug in relssl" in err.splitlines()[-1]


def test_a_user_error_is_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *QUICK, "--runs-dir", str(tmp_path), "--set", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("relssl train: error: config key 'optim.lr'")
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("relssl eval knn: error: checkpoint") and err.count("\n") == 1


@pytest.mark.parametrize("kind", [errors.ConfigError, errors.DataError, errors.CheckpointError,
                                  errors.NonFiniteLossError])
def test_every_user_error_kind_is_a_relssl_error(kind: type[Exception], monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise kind("what went wrong, and the fix")

    monkeypatch.setattr("relssl.cli.train.run_training", fail)
    assert issubclass(kind, errors.RelsslError)
    assert main(["train", *QUICK]) == 2
    assert capsys.readouterr().err == "relssl train: error: what went wrong, and the fix\n"


def test_relssl_debug_shows_the_traceback_of_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELSSL_DEBUG", "1")
    with pytest.raises(errors.ConfigError, match="optim.lr"):
        main(["train", *QUICK, "--set", "optim.lr=-1"])


def test_ctrl_c_outside_the_training_loop_exits_130(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("relssl.cli.benchmark.load_grid", interrupted)
    assert main(["benchmark", "--config", "grid.yaml"]) == 130
    assert capsys.readouterr().err == "relssl benchmark: interrupted; run the same command again to continue\n"
