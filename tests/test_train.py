"""Training loop: exact resume, safe checkpoints, NaN stop, and the CLI end to end on digits."""

import json

import numpy as np
import pytest
import torch

from relssl.augment import AugmentConfig
from relssl.cli import main
from relssl.errors import CheckpointError, NonFiniteLossError
from relssl.methods import StepOutput
from relssl.train import build_method
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import build_config
from relssl.train.run import build_backbone
from relssl.train.trainer import Trainer


def _arrays(n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, size=n)


def _trainer(tmp_path, max_steps, name="run"):
    cfg = build_config({}, {"relational.k": 3, "train.batch_size": 8, "train.max_steps": max_steps,
                            "train.progress": False, "train.log_every": 2, "train.device": "cpu"})
    images, labels = _arrays()
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    method = build_method(cfg, build_backbone(cfg), num_images=len(images), num_classes=3)
    return Trainer(cfg, method, images, labels, AugmentConfig(), torch.device("cpu"), run_dir)


def test_resume_continues_bit_for_bit(tmp_path):
    # 7 steps straight through (crossing the 6-step epoch boundary) ...
    straight = _trainer(tmp_path, 7, "straight")
    straight.fit()
    # ... equals 4 steps, a checkpoint, a fresh process-like trainer, then 3 more.
    first = _trainer(tmp_path, 4, "split")
    first.fit()
    resumed = _trainer(tmp_path, 7, "split")
    resumed.load_state_dict(load_checkpoint(tmp_path / "split"))
    assert resumed.state.global_step == 4
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (tmp_path / "split" / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 7  # header + one row per step, across the resume
    ref = (tmp_path / "straight" / "train_log.csv").read_text().strip().splitlines()
    losses = lambda lines: [line.split(",")[3] for line in lines[1:]]  # noqa: E731
    assert losses(rows) == losses(ref)


def test_checkpoint_is_weights_only_and_atomic(tmp_path):
    t = _trainer(tmp_path, 2)
    t.fit()
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["train_state"]["global_step"] == 2
    assert not list((tmp_path / "run").glob("*.tmp"))
    t.export_backbone()
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "backbone.safetensors")
    assert set(weights) == set(t.method.backbone.state_dict())


def test_hostile_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="safely"):
        load_checkpoint(path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    t = _trainer(tmp_path, 12)
    t.config.train.checkpoint_every_steps = 2
    original = t.method.training_step
    calls = {"n": 0}

    def poisoned(views, labels, indices):
        calls["n"] += 1
        out = original(views, labels, indices)
        if calls["n"] >= 5:
            return StepOutput(loss=out.loss * float("nan"), metrics=out.metrics)
        return out

    t.method.training_step = poisoned
    with pytest.raises(NonFiniteLossError, match="step 5"):
        t.fit()
    saved = load_checkpoint(tmp_path / "run")
    assert saved["train_state"]["global_step"] == 4
    for value in saved["method"].values():
        assert torch.isfinite(value.float()).all()


def test_semi_supervised_labels_are_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 25)
    cfg = build_config({}, {"relational.k": 2, "relational.labelled_fraction": 0.2})
    method = build_method(cfg, build_backbone(cfg), num_images=len(labels), num_classes=4)
    kept = method.training_labels(labels, seed=3)
    assert (kept >= 0).sum() == 20
    assert all((kept == c).sum() == 5 for c in range(4))
    assert np.array_equal(kept, method.training_labels(labels, seed=3))
    assert not np.array_equal(kept, method.training_labels(labels, seed=4))
    assert np.all((kept == -1) | (kept == labels))
    unsupervised = build_config({}, {"relational.k": 2})
    plain = build_method(unsupervised, build_backbone(unsupervised), num_images=len(labels), num_classes=4)
    assert np.array_equal(plain.training_labels(labels, seed=3), labels)


def test_cli_train_and_eval_on_digits(tmp_path, capsys):
    code = main(["train", "--epochs", "1", "--k", "2", "--batch-size", "32", "--runs-dir", str(tmp_path),
                 "--run-name", "digits", "--no-progress", "--set", "eval.epochs=3"])
    assert code == 0
    run_dir = tmp_path / "digits"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("linear_top1", "random_init_linear_top1"):
        assert 0.0 <= metrics[key] <= 100.0
    from relssl.data import load_split

    assert metrics["train_epochs_completed"] == 1
    assert metrics["train_steps"] == len(load_split("digits", "train")) // 32
    out = capsys.readouterr().out
    assert "run directory" in out and "linear top-1" in out
    assert (run_dir / "train_log.csv").exists() and (run_dir / "backbone.safetensors").exists()

    result = tmp_path / "eval.json"
    assert main(["eval", "linear", "--checkpoint", str(run_dir), "--epochs", "3", "--no-progress",
                 "--output", str(result)]) == 0
    assert json.loads(result.read_text())["top1"] == pytest.approx(metrics["linear_top1"], abs=1e-6)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--set", "relational.aggregation=product", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "relational.aggregation" in err
    assert main(["eval", "linear", "--checkpoint", str(tmp_path / "missing"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    runs = tmp_path / "runs"
    assert main(["train", "--dataset", "imagefolder", "--data-root", str(empty), "--runs-dir", str(runs),
                 "--no-progress"]) == 2
    assert str(empty) in capsys.readouterr().err
    assert not runs.exists()  # a failed start leaves no run directory behind
