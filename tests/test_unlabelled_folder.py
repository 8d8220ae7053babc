"""Pretraining on a folder of unlabelled images: it trains, skips evaluation with one note, writes label-free metrics;
or, given eval.root, monitors and evaluates on a separate labelled folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from relssl.cli import main
from relssl.train.config import RunConfig
from relssl.train.eval_target import EvalTarget, eval_target

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


def _labelled_folder(root: Path) -> dict[str, int]:
    """root/train/<class>/ and root/test/<class>/ of noise PNGs (two classes); the image count of each split."""
    counts = {"train": 8, "test": 3}
    for split, count in counts.items():
        for seed, name in enumerate(("a", "b")):
            _noise_pngs(root / split / name, count, seed=10 * seed + len(split))
    return {split: 2 * count for split, count in counts.items()}


def test_a_flat_folder_pretrains_while_a_labelled_folder_monitors_and_evaluates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos, labelled, runs = tmp_path / "photos", tmp_path / "labelled", tmp_path / "runs"
    _noise_pngs(photos, 24)
    counts = _labelled_folder(labelled)
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(photos), *QUICK,
                 "--set", "eval.dataset=imagefolder", "--set", f"eval.root={labelled}", "--set", "eval.monitor_every=1",
                 "--runs-dir", str(runs), "--run-name", "r"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert NOTE not in out and "note:" not in out
    assert f"{counts['train']} train images of {labelled} as the memory bank, {counts['test']} test images" in out
    run = runs / "r"
    assert len((run / "monitor.csv").read_text().splitlines()) >= 2  # the header and at least one measurement
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["eval_test_images"] == counts["test"] and metrics["eval_root"] == str(labelled.absolute())
    assert 0 <= metrics["linear_top1"] <= 100 and metrics["monitor"]
    assert metrics["feature_stats"]["images"] == 24  # label-free statistics still describe the pretraining images
    cached = sorted((run / "features").glob("*.safetensors"))
    assert cached
    for path in cached:  # the feature cache is keyed by the labelled folder, not by the name "imagefolder" alone
        with safe_open(str(path), "pt") as fh:
            assert json.loads(fh.metadata()["identity"])["data"]["root"] == str(labelled.absolute())


def test_eval_root_counts_as_the_run_s_own_data_only_when_it_is_the_pretraining_folder(tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    photos, labelled = tmp_path / "photos", tmp_path / "labelled"
    photos.mkdir()
    labelled.mkdir()
    (tmp_path / "link").symlink_to(photos)
    monkeypatch.chdir(tmp_path)

    def target(**eval_settings: str) -> EvalTarget:
        return eval_target(RunConfig.model_validate({"data": {"dataset": "imagefolder", "root": str(photos)},
                                                     "eval": eval_settings}))

    for same in ({}, {"root": "photos"}, {"root": "link"}, {"dataset": "imagefolder", "root": f"{photos}/"}):
        found = target(**same)
        assert found.same and found.root == str(photos) and found.key("train") == "data.eval_train_split", same
    for other in ({"root": str(labelled)}, {"dataset": "imagefolder", "root": "labelled"}):
        found = target(**other)
        assert not found.same and found.data.root == found.root == other["root"], other
        assert found.key("test") == "eval.root" and (found.train_split, found.test_split) == ("train", "test")
