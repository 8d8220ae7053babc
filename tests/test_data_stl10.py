"""STL-10 reader on tiny .bin files written exactly as the STL-10 page describes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from relssl.data import DataError, load_split

NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def write_x(path: Path, images: np.ndarray) -> None:
    """Per image: the red, green and blue 96x96 planes, each stored column-major (as the STL-10 docs say)."""
    with open(path, "wb") as handle:
        for image in images:
            for channel in range(3):
                handle.write(image[:, :, channel].tobytes(order="F"))


def pattern_images(n: int) -> np.ndarray:
    """Images whose pixels tell row, column, channel and image apart, plus a marked top-left corner."""
    y, x = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    images = np.zeros((n, 96, 96, 3), np.uint8)
    for i in range(n):
        images[i, :, :, 0] = y  # red grows downwards
        images[i, :, :, 1] = x  # green grows to the right
        images[i, :, :, 2] = 100 + i
        images[i, :4, :4] = (255, 0, 0)  # a red block in the top-left corner
    return images


def make_stl10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    (folder / "class_names.txt").write_text("\n".join(NAMES) + "\n")
    truth = {}
    for split, n in (("train", 3), ("test", 2), ("unlabeled", 4)):
        images = pattern_images(n)
        write_x(folder / f"{split}_X.bin", images)
        labels = None
        if split != "unlabeled":
            labels = np.arange(1, n + 1, dtype=np.uint8) + (7 if split == "test" else 0)  # 1..10 on disk
            labels.tofile(folder / f"{split}_y.bin")
        truth[split] = (images, labels)
    return truth


def test_stl10_orientation_labels_and_classes(tmp_path: Path) -> None:
    truth = make_stl10(tmp_path)
    train = load_split("stl10", "train", tmp_path, download=False, progress=False)
    assert train.images.shape == (3, 96, 96, 3)
    np.testing.assert_array_equal(train.images, truth["train"][0])
    image = train.images[1]
    assert tuple(image[0, 0]) == (255, 0, 0)  # the marked corner is top-left: upright, not transposed
    assert image[50, 10, 0] == 50 and image[50, 10, 1] == 10  # red = row, green = column
    assert image[0, 0, 2] == 0 and image[10, 10, 2] == 101
    np.testing.assert_array_equal(train.labels, [0, 1, 2])  # 1..3 on disk
    assert train.classes == tuple(NAMES)
    test = load_split("stl10", "test", tmp_path, download=False, progress=False)
    np.testing.assert_array_equal(test.labels, [7, 8])  # 8, 9 on disk


def test_stl10_unlabeled_split(tmp_path: Path) -> None:
    truth = make_stl10(tmp_path)
    data = load_split("stl10", "unlabeled", tmp_path, download=False, progress=False)
    np.testing.assert_array_equal(data.images, truth["unlabeled"][0])
    assert data.labels.tolist() == [-1] * 4 and data.num_classes == 10


def test_stl10_image_size(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    data = load_split("stl10", "train", tmp_path, download=False, progress=False, image_size=48)
    assert data.images.shape == (3, 48, 48, 3)
    assert data.images[1, 0, 0, 0] > 200 and data.images[1, 0, 0, 1] < 50  # corner still red, still top-left


def test_stl10_truncated_file_is_named(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    x = tmp_path / "stl10_binary" / "test_X.bin"
    x.write_bytes(x.read_bytes()[:-5])
    with pytest.raises(DataError, match="test_X.bin"):
        load_split("stl10", "test", tmp_path, download=False, progress=False)


def test_stl10_label_count_mismatch_is_named(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    np.array([1], np.uint8).tofile(tmp_path / "stl10_binary" / "train_y.bin")
    with pytest.raises(DataError, match="train_y.bin"):
        load_split("stl10", "train", tmp_path, download=False, progress=False)
