"""The evaluation feature cache is keyed by what determines the features: another data root, split, checkpoint or
normalisation never reuses features computed for something else (it used to be keyed by dataset name only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from relssl.cli import main
from relssl.evaluate import FeatureCache
from relssl.evaluate.keys import feature_key


def make_folder(root: Path, seed: int) -> None:
    """train/ and test/ with three classes of 16x16 images; another seed gives other pixels and a harder split."""
    rng = np.random.default_rng(seed)
    from PIL import Image

    for split, count in (("train", 12), ("test", 6)):
        for c in range(3):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3)) if seed else np.full((16, 16, 3), 40 + 80 * c)
                noise = rng.integers(0, 40, (16, 16, 3))
                Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


def _linear(run: Path, root: Path, out: Path, *extra: str) -> dict:
    assert main(["eval", "linear", "--checkpoint", str(run), "--dataset", "imagefolder", "--data-root", str(root),
                 "--epochs", "100", "--lr", "0.01", "--no-progress", "--output", str(out), *extra]) == 0
    return json.loads(out.read_text())


def test_another_data_root_is_not_served_the_first_roots_features(digits_run: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_folder(a, seed=0)  # solid colours per class: easy
    make_folder(b, seed=1)  # random pixels: chance level
    first = _linear(digits_run, a, tmp_path / "a.json")
    second = _linear(digits_run, b, tmp_path / "b.json")
    fresh_run = tmp_path / "fresh"
    fresh_run.mkdir()
    for name in ("last.pt", "config.yaml"):
        (fresh_run / name).write_bytes((digits_run / name).read_bytes())
    fresh = _linear(fresh_run, b, tmp_path / "fresh.json")  # no cache at all
    assert first["top1"] != second["top1"]
    assert second["top1"] == pytest.approx(fresh["top1"], abs=1e-9)
    keys = sorted(p.name for p in (digits_run / "features").iterdir() if "imagefolder" in p.name)
    assert len(keys) == 4  # train and test features of each root, side by side


def test_a_resumed_run_evaluating_another_test_split_is_not_served_the_old_features(tmp_path: Path) -> None:
    root = tmp_path / "c"
    make_folder(root, seed=0)
    (root / "test").rename(root / "val")  # val/: the easy solid colours
    make_folder(tmp_path / "other", seed=1)
    (tmp_path / "other" / "test").rename(root / "test")  # test/: random pixels, chance level
    runs = tmp_path / "runs"
    common = ["--no-progress", "--set", "eval.epochs=100", "--set", "eval.lr=0.01", "--set", "eval.compare_random=false"]
    assert main(["train", "--dataset", "imagefolder", "--data-root", str(root), "--k", "2", "--batch-size", "8",
                 "--max-steps", "2", "--runs-dir", str(runs), "--run-name", "r", "--set", "data.eval_test_split=val",
                 *common]) == 0
    on_val = json.loads((runs / "r" / "metrics.json").read_text())["linear_top1"]
    assert main(["train", "--resume", str(runs / "r"), "--set", "data.eval_test_split=test", *common]) == 0
    on_test = json.loads((runs / "r" / "metrics.json").read_text())["linear_top1"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("last.pt", "config.yaml"):
        (fresh / name).write_bytes((runs / "r" / name).read_bytes())
    expected = _linear(fresh, root, tmp_path / "fresh.json", "--test-split", "test")
    assert on_test == pytest.approx(expected["top1"], abs=1e-9) and on_test != on_val


def test_another_test_split_gets_its_own_features(digits_run: Path, tmp_path: Path) -> None:
    root = tmp_path / "c"
    make_folder(root, seed=0)
    (root / "test").rename(root / "val")
    make_folder(tmp_path / "other", seed=1)
    (tmp_path / "other" / "train").rename(root / "test")  # a test split with other images than val/
    val = _linear(digits_run, root, tmp_path / "val.json", "--test-split", "val")
    test = _linear(digits_run, root, tmp_path / "test.json", "--test-split", "test")
    assert val["top1"] != test["top1"]


def test_a_cache_entry_stored_for_another_identity_is_a_miss(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    identity = {"weights": "abc", "data": {"root": "/a"}}
    key = feature_key("learned", "train", identity)
    assert key != feature_key("learned", "train", {**identity, "data": {"root": "/b"}})
    cache.put(key, torch.ones(3, 2), identity)
    assert torch.equal(cache.get(key, identity), torch.ones(3, 2))
    assert cache.get(key, {**identity, "weights": "xyz"}) is None  # same file name, other content: not served
    npy = FeatureCache(tmp_path / "npy", format="npy")
    npy.put(key, torch.zeros(2, 2), identity)
    assert npy.get(key, identity) is not None and npy.get(key, {"weights": "other"}) is None
