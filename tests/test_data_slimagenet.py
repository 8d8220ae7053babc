"""SlimageNet64 reader on a small tree in the (assumed) layout of the Zenodo release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.data import DataError, dataset_splits, load_split

# official layout: class-disjoint train/val/test folders named n<number>
LAYOUT = {"train": ["n0001", "n0003"], "val": ["n0002"], "test": ["n0004"]}
PER_CLASS = 5


def make_slim(root: Path, mapping: bool = True) -> Path:
    base = root / "SlimageNet64"
    for split, classes in LAYOUT.items():
        for name in classes:
            folder = base / split / name
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                value = int(name[1:]) * 10 + i
                Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(folder / f"{name}_{i:03d}.png")
    if mapping:
        (base / "label_to_imagenet_class_mappings.txt").write_text(
            "n02119789 1 kit_fox\nn02100735 2 English_setter\n"
            "n02110185 3 Siberian_husky\nn02096294 4 Australian_terrier\n"
        )
    return base


def test_slimagenet_official_splits_share_labels(tmp_path: Path) -> None:
    make_slim(tmp_path)
    names = ("kit_fox", "English_setter", "Siberian_husky", "Australian_terrier")
    train = load_split("slimagenet64", "train", tmp_path, download=False, progress=False)
    assert train.images.shape == (10, 64, 64, 3) and train.classes == names
    np.testing.assert_array_equal(train.labels, [0] * 5 + [2] * 5)
    assert train.images[0, 0, 0, 0] == 10 and train.images[9, 5, 5, 2] == 34
    val = load_split("slimagenet64", "val", tmp_path, download=False, progress=False)
    assert val.labels.tolist() == [1] * 5 and val.classes == names
    test = load_split("slimagenet64", "test", tmp_path, download=False, progress=False)
    assert test.labels.tolist() == [3] * 5


def test_slimagenet_protocol_splits_160_40(tmp_path: Path) -> None:
    make_slim(tmp_path / "data")
    assert {"train160", "test40"} <= set(dataset_splits("slimagenet64"))
    train = load_split("slimagenet64", "train160", tmp_path / "data", download=False, progress=False)
    test = load_split("slimagenet64", "test40", tmp_path / "data", download=False, progress=False)
    assert len(train) == 4 * 4 and len(test) == 4 * 1  # 80% of 5 per class, of all 4 classes
    np.testing.assert_array_equal(np.bincount(train.labels), [4, 4, 4, 4])
    # the last image of each class by file name goes to test40
    assert sorted(test.images[:, 0, 0, 0].tolist()) == [14, 24, 34, 44]


def test_slimagenet_without_mapping_uses_folder_names(tmp_path: Path) -> None:
    base = make_slim(tmp_path, mapping=False)
    data = load_split("slimagenet64", "val", base, download=False, progress=False)
    assert data.classes == ("n0001", "n0002", "n0003", "n0004")


def test_slimagenet_missing_points_to_zenodo(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"zenodo\.org/record/3672132"):
        load_split("slimagenet64", "train", tmp_path, progress=False)
