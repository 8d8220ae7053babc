"""tiny-ImageNet-200 reader on a small tree in the layout of the official zip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.data import DataError, dataset_splits, load_split

WNIDS = ["n09999999", "n01443537", "n02085620"]  # wnids.txt is not sorted in the official file either
WORDS = {"n01443537": "goldfish, Carassius auratus", "n02085620": "Chihuahua",
         "n09999999": "zebra crossing, crosswalk", "n00000001": "unused"}
COLORS = {"n01443537": (200, 40, 40), "n02085620": (40, 200, 40), "n09999999": (40, 40, 200)}


def jpeg(path: Path, color: tuple[int, int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 64), color)
    (image.convert("L") if mode == "L" else image).save(path, "JPEG", quality=95)


def make_tiny(root: Path) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()))
    for wnid in WNIDS:
        for i in range(2):
            mode = "L" if i and wnid == WNIDS[0] else "RGB"  # one grayscale JPEG, as in the real data
            jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLORS[wnid], mode)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    lines = []
    for i, wnid in enumerate(["n02085620", "n01443537", "n09999999", "n01443537"]):
        jpeg(base / "val" / "images" / f"val_{i}.JPEG", COLORS[wnid])
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (base / "test" / "images").mkdir(parents=True)
    return base


def test_tiny_imagenet_train(tmp_path: Path) -> None:
    make_tiny(tmp_path)
    data = load_split("tiny-imagenet", "train", tmp_path, download=False, progress=False)
    assert data.images.shape == (6, 64, 64, 3)
    assert data.classes == ("goldfish", "Chihuahua", "zebra crossing")  # sorted wnids, first name
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 2, 2])
    for image, label in zip(data.images[:5], data.labels[:5]):  # solid colours survive JPEG within +-3
        assert np.abs(image.astype(int) - np.array(COLORS[sorted(WNIDS)[label]])).max() <= 3
    gray = data.images[5]  # the grayscale JPEG of n09999999: decoded to 3 equal channels
    assert gray.shape == (64, 64, 3) and np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 1] == gray[..., 2])


def test_tiny_imagenet_val_from_annotations_and_test_alias(tmp_path: Path) -> None:
    make_tiny(tmp_path)
    assert "test" in dataset_splits("tiny-imagenet") and "val" in dataset_splits("tiny-imagenet")
    val = load_split("tiny-imagenet", "val", tmp_path, download=False, progress=False)
    np.testing.assert_array_equal(val.labels, [1, 0, 2, 0])  # val_0..3, labels by sorted wnid
    for image, label in zip(val.images, val.labels):
        assert np.abs(image.astype(int) - np.array(COLORS[sorted(WNIDS)[label]])).max() <= 3
    test = load_split("tiny-imagenet", "test", tmp_path, download=False, progress=False)
    np.testing.assert_array_equal(test.images, val.images)
    np.testing.assert_array_equal(test.labels, val.labels)


def test_tiny_imagenet_root_may_be_the_dataset_folder(tmp_path: Path) -> None:
    base = make_tiny(tmp_path)
    data = load_split("tiny-imagenet", "val", base, download=False, progress=False)
    assert len(data) == 4


def test_tiny_imagenet_missing_val_image_is_named(tmp_path: Path) -> None:
    base = make_tiny(tmp_path)
    (base / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DataError, match="val_2.JPEG"):
        load_split("tiny-imagenet", "val", tmp_path, download=False, progress=False)


def test_tiny_imagenet_missing_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="tiny-imagenet-200.zip"):
        load_split("tiny-imagenet", "train", tmp_path, download=False, progress=False)
