"""Pretraining on a folder of unlabelled images: it trains, skips evaluation with one note, writes label-free metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.cli import main

QUICK = ["--max-steps", "3", "--k", "2", "--batch-size", "8", "--no-progress", "--device", "cpu"]
NOTE = "evaluation needs labels, so it was skipped"


def _noise_pngs(folder: Path, count: int, seed: int = 0) -> None:
    """`count` 12x12 PNGs of random pixels in `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")


@pytest.mark.parametrize("layout", ["flat", "albums", "streamed"])
def test_an_unlabelled_folder_trains_and_writes_label_free_metrics(tmp_path: Path, layout: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, runs = tmp_path / "photos", tmp_path / "runs"
    _noise_pngs(root, 40)
    if layout == "albums":  # loose images next to plain sub-folders: still no classes
        _noise_pngs(root / "2024" / "summer", 4, seed=1)
    stream = ["--set", "data.stream=true", "--set", "data.workers=0"] if layout == "streamed" else []
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(root), *QUICK, *stream,
                 "--runs-dir", str(runs), "--run-name", "r"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count(NOTE) == 1 and "relssl eval linear --checkpoint" in out
    metrics = json.loads((runs / "r" / "metrics.json").read_text())
    stats = metrics["feature_stats"]
    assert stats["images"] == (44 if layout == "albums" else 40) and stats["feature_dim"] == 64
    assert 1 <= stats["effective_rank"] <= 40 and stats["uniformity"] <= 0
    assert 0 <= stats["collapsed_share"] <= 1 and stats["std_mean"] >= 0
    assert "no labels" in metrics["eval_skipped"]
    assert not [key for key in metrics if "top1" in key or key.startswith("eval_") and key != "eval_skipped"]
    assert (runs / "r" / "backbone.safetensors").is_file()


def test_class_folders_without_a_test_split_train_and_skip_evaluation(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, runs = tmp_path / "photos", tmp_path / "runs"
    _noise_pngs(root / "a", 10)
    _noise_pngs(root / "b", 10, seed=1)
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(root), *QUICK,
                 "--runs-dir", str(runs), "--run-name", "r"])
    out = capsys.readouterr().out
    assert code == 0 and out.count(NOTE) == 1 and "no labelled test split" in out
    assert json.loads((runs / "r" / "metrics.json").read_text())["feature_stats"]["images"] == 20


@pytest.mark.parametrize("linear", [True, False])
def test_the_knn_monitor_on_an_unlabelled_folder_adds_no_second_note(tmp_path: Path, linear: bool,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root, runs = tmp_path / "photos", tmp_path / "runs"
    _noise_pngs(root, 20)
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(root), *QUICK, "--set", "eval.monitor_every=1",
                 "--set", f"eval.linear={str(linear).lower()}", "--runs-dir", str(runs), "--run-name", "r"])
    out = capsys.readouterr().out
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, out
    assert "no labels" in notes[0] and "kNN monitor (eval.monitor_every)" in notes[0]
    assert (NOTE in notes[0]) is linear
    assert not (runs / "r" / "monitor.csv").exists()
    assert ("eval_skipped" in json.loads((runs / "r" / "metrics.json").read_text())) is linear
