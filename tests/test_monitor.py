"""The kNN monitor (eval.monitor_every) and what a run leaves to watch it: monitor.csv, metrics.json, loss.png,
TensorBoard event files and an offline wandb run. The runs are short digits runs (10 steps per epoch)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from relssl.cli import main
from relssl.data import load_split
from relssl.train.artifacts import load_trained_backbone
from relssl.train.monitor import MONITOR_COLUMNS, monitor_due
from relssl.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = ["--epochs", "5", "--k", "2", "--batch-size", "128", "--no-progress", "--device", "cpu",
        "--set", "eval.linear=false", "--set", "train.log_every=5"]
MONITOR = ["--set", "eval.monitor_every=2"]


def _train(runs: Path, name: str, *extra: str) -> int:
    return main(["train", *BASE, "--runs-dir", str(runs), "--run-name", name, *extra])


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _losses(run: Path) -> list[str]:
    return [row["loss"] for row in _rows(run / "train_log.csv")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A monitored run with both trackers on (wandb offline), and the same run unmonitored.

    Trained on one thread, as the tests that compare against them run (the function-scoped
    `one_thread` fixture starts only after this module-scoped one), so the floats agree bit for bit.
    """
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_MODE"] = "offline"
    root = tmp_path_factory.mktemp("monitor")
    before = torch.get_num_threads()
    with threadpool_limits(limits=1):
        torch.set_num_threads(1)
        try:
            assert _train(root, "watched", *MONITOR, "--set", "log.tensorboard=true", "--set", "log.wandb=true",
                          "--set", "log.wandb_mode=offline") == 0
            assert _train(root, "plain") == 0
        finally:
            torch.set_num_threads(before)
    return root


def test_monitor_measures_at_the_requested_epochs_and_the_last(runs: Path) -> None:
    rows = _rows(runs / "watched" / "monitor.csv")
    assert tuple(rows[0]) == MONITOR_COLUMNS
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(2, 20), (4, 40), (5, 50)]
    history = json.loads((runs / "watched" / "metrics.json").read_text())["monitor"]
    assert [(h["epoch"], h["step"]) for h in history] == [(2, 20), (4, 40), (5, 50)]
    assert [round(h["knn_top1"], 4) for h in history] == [float(r["knn_top1"]) for r in rows]
    assert all(0 <= h["knn_top1"] <= 100 for h in history)
    assert not (runs / "plain" / "monitor.csv").exists()
    assert "monitor" not in json.loads((runs / "plain" / "metrics.json").read_text())


@pytest.mark.parametrize("every, epochs, expected", [(2, 5, [2, 4, 5]), (1, 3, [1, 2, 3]), (3, 3, [3]), (0, 3, [])])
def test_monitor_schedule(every: int, epochs: int, expected: list[int]) -> None:
    assert [e for e in range(1, epochs + 1) if monitor_due(e, every, last=e == epochs)] == expected


def _weighted_knn(bank: np.ndarray, bank_y: np.ndarray, query: np.ndarray, query_y: np.ndarray, k: int = 20,
                  tau: float = 0.07) -> float:
    """Wu et al. 2018's weighted vote written out in NumPy: top-k cosine neighbours vote exp(s / tau)."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    sims = query @ bank.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(query), int(bank_y.max()) + 1))
    for i, row in enumerate(top):
        np.add.at(votes[i], bank_y[row], np.exp(sims[i, row] / tau))
    return 100.0 * float((votes.argmax(axis=1) == query_y).mean())


def test_the_last_value_is_a_weighted_knn_of_the_trained_backbone(runs: Path) -> None:
    from relssl.augment import to_normalized
    from relssl.evaluate import extract_features

    backbone, config, _ = load_trained_backbone(runs / "watched")
    aug = config["augment"]

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        arrays = load_split("digits", split)
        x = extract_features(backbone, arrays.images, normalize=lambda b: to_normalized(b, aug["mean"], aug["std"],
                                                                                        aug["size"]))
        return x.double().numpy(), np.asarray(arrays.labels)

    (bank, bank_y), (query, query_y) = features("train"), features("test")
    expected = _weighted_knn(bank, bank_y, query, query_y)
    last = json.loads((runs / "watched" / "metrics.json").read_text())["monitor"][-1]["knn_top1"]
    assert last == pytest.approx(expected, abs=1e-9)


def test_monitoring_does_not_change_the_training(runs: Path) -> None:
    """Measuring runs the backbone in eval mode without gradients and keeps the RNG: the losses are identical."""
    assert _losses(runs / "watched") == _losses(runs / "plain")


def test_resume_continues_the_history_without_duplicates(runs: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:  # a stop agreed at step 30, in the third epoch
        patch.setattr(Trainer, "_stop_agreed", lambda self, stop, sync: self.state.global_step >= 30)
        assert _train(tmp_path, "r", *MONITOR, "--set", "log.tensorboard=true") == 130
    run = tmp_path / "r"
    assert [r["step"] for r in _rows(run / "monitor.csv")] == ["20"]
    with (run / "monitor.csv").open("a") as fh:  # a measurement written after the checkpoint, then a kill
        fh.write("4,40,12.5\n")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run / "tensorboard")) as writer:  # and a loss logged after it
        writer.add_scalar("train/loss", 99.0, 35)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    rows = _rows(run / "monitor.csv")
    assert rows == _rows(runs / "watched" / "monitor.csv")  # the same values as the uninterrupted run
    history = json.loads((run / "metrics.json").read_text())["monitor"]
    assert [h["step"] for h in history] == [20, 40, 50]
    assert (run / "loss.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert 99.0 not in [e.value for e in events.Scalars("train/loss")]  # purged by the resumed session
    assert [e.step for e in events.Scalars("monitor/knn_top1")] == [20, 40, 50]


def test_monitor_samples_caps_both_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-steps", "3", "--k", "2", "--batch-size", "128", "--no-progress",
                 "--set", "eval.linear=false", "--set", "eval.monitor_every=1", "--set", "eval.monitor_samples=100",
                 "--runs-dir", str(tmp_path), "--run-name", "r"]) == 0
    out = capsys.readouterr().out
    assert "100 train images as the memory bank, 100 test images scored" in out
    assert [r["step"] for r in _rows(tmp_path / "r" / "monitor.csv")] == ["3"]  # the budget ended inside epoch 1


def test_an_unlabelled_folder_skips_the_monitor_with_one_note(tmp_path: Path, png: Callable[..., None],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(12):
        png(tmp_path / "photos" / f"{i}.png", (20 * i, 100, 255 - 20 * i), size=(16, 16))
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "photos"), "--max-steps", "2",
                 "--k", "2", "--batch-size", "4", "--no-progress", "--set", "eval.linear=false",
                 "--set", "eval.monitor_every=1", "--runs-dir", str(tmp_path / "runs"), "--run-name", "r"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("kNN monitor (eval.monitor_every) is skipped") == 1
    assert not (tmp_path / "runs" / "r" / "monitor.csv").exists()


def test_loss_png_is_a_picture_of_the_curve(runs: Path) -> None:
    for name in ("watched", "plain"):
        with Image.open(runs / name / "loss.png") as image:
            assert image.format == "PNG"
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # lines and text, not a blank page
    with Image.open(runs / "watched" / "loss.png") as two, Image.open(runs / "plain" / "loss.png") as one:
        assert two.width > one.width  # the monitor's panel beside the loss


def test_tensorboard_event_files_hold_the_loss_and_the_monitor(runs: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(runs / "watched" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "monitor/knn_top1"} <= set(tags)
    loss = events.Scalars("train/loss")
    logged = {int(r["step"]): float(r["loss"]) for r in _rows(runs / "watched" / "train_log.csv")}
    assert [e.step for e in loss] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert all(e.value == pytest.approx(logged[e.step], rel=1e-5) for e in loss)
    assert [e.step for e in events.Scalars("monitor/knn_top1")] == [20, 40, 50]
    assert not (runs / "plain" / "tensorboard").exists()


def test_wandb_offline_run_is_written_in_the_run_directory(runs: Path) -> None:
    written = list((runs / "watched" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(written) == 1 and written[0].stat().st_size > 0


def test_a_missing_tracker_package_is_one_line_naming_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert main(["train", *BASE, "--set", "log.tensorboard=true", "--runs-dir", str(tmp_path), "--run-name", "r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'relssl[tensorboard]'" in err and "log.tensorboard" in err
    assert not (tmp_path / "r").exists()


def test_old_saved_configs_without_the_new_keys_still_load() -> None:
    from relssl.train.config import build_config

    tree = build_config().to_dict()
    del tree["log"]
    for key in ("monitor_every", "monitor_samples"):
        del tree["eval"][key]
    config = build_config(tree, check_other_methods=False)
    assert config.eval.monitor_every == 0 and not config.log.tensorboard and not config.log.wandb


def test_knn_monitor_keeps_train_mode_and_rng() -> None:
    from relssl.data import ImageArrays
    from relssl.evaluate import EvalData
    from relssl.train.monitor import KnnMonitor

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 8, 8, 3), generator=g, dtype=torch.uint8).numpy()
    labels = np.arange(40) % 4
    split = ImageArrays(images, labels, ("a", "b", "c", "d"))
    data = EvalData(train=split, test=split)
    settings = {"mean": (0.5,) * 3, "std": (0.25,) * 3, "size": None, "device": torch.device("cpu")}
    assert KnnMonitor(data, samples=30, **settings).sizes == (30, 30)  # type: ignore[arg-type]
    monitor = KnnMonitor(data, k=1, **settings)  # type: ignore[arg-type]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                              torch.nn.Flatten()).train()
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    value = monitor.measure(net)
    assert torch.rand(1) == before and net.training and all(m.training for m in net.modules())
    assert value == 100.0  # the same images in bank and query: each one's nearest neighbour is itself


def test_two_ranks_measure_on_rank_0_without_a_deadlock(tmp_path: Path) -> None:
    """Under torchrun (two gloo ranks) rank 0 measures while rank 1 waits in the monitor's one broadcast."""
    import subprocess
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "relssl",
               "train", "--epochs", "3", "--k", "2", "--batch-size", "128", "--no-progress", "--device", "cpu",
               "--set", "eval.linear=false", "--set", "eval.monitor_every=1", "--set", "log.tensorboard=true",
               "--runs-dir", str(tmp_path), "--run-name", "r"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("monitor: epoch") == 3  # rank 0 alone logs
    assert [r["epoch"] for r in _rows(tmp_path / "r" / "monitor.csv")] == ["1", "2", "3"]
    history = json.loads((tmp_path / "r" / "metrics.json").read_text())["monitor"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert len(list((tmp_path / "r" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
