"""The generic image-folder reader in its three shapes, with size handling and bad-input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.data import DataError, load_split


def load(root: Path, split: str, **kw):
    return load_split("imagefolder", split, root, download=False, progress=False, **kw)


def test_split_layout_train_test_and_shared_classes(tmp_path: Path, png) -> None:
    for split, classes in (("train", ["cat", "dog"]), ("test", ["dog", "emu"])):
        for c in classes:
            for i in range(2):
                png(tmp_path / split / c / f"{i}.png", (len(c) * 10 + i, 0, 0))
    train, test = load(tmp_path, "train"), load(tmp_path, "test")
    assert train.classes == test.classes == ("cat", "dog", "emu")
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(test.labels, [1, 1, 2, 2])
    assert train.images.shape == (4, 8, 8, 3) and train.images[1, 0, 0, 0] == 31
    both = load(tmp_path, "all")
    assert len(both) == 8 and both.labels.tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(DataError, match="no val/ folder"):
        load(tmp_path, "val")


def test_test_falls_back_to_val(tmp_path: Path, png) -> None:
    png(tmp_path / "train" / "a" / "0.png", 1)
    png(tmp_path / "val" / "a" / "0.png", 2)
    test = load(tmp_path, "test")
    assert test.images[0, 0, 0, 0] == 2 and test.labels.tolist() == [0]


def test_class_layout_is_split_all_and_train(tmp_path: Path, png) -> None:
    png(tmp_path / "b" / "x.PNG", 5)  # extension case does not matter
    png(tmp_path / "a" / "deeper" / "y.png", 6)  # found recursively
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    data = load(tmp_path, "all")
    assert data.classes == ("a", "b") and data.labels.tolist() == [0, 1]
    assert data.images[:, 0, 0, 0].tolist() == [6, 5]
    np.testing.assert_array_equal(load(tmp_path, "train").images, data.images)
    with pytest.raises(DataError, match="only split is 'all'"):
        load(tmp_path, "test")


def test_flat_folder_is_unlabeled(tmp_path: Path) -> None:
    for i, ext in enumerate(["jpg", "JPEG", "png", "bmp", "webp", "ppm"]):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(tmp_path / f"{i}.{ext}")
    data = load(tmp_path, "all")
    assert len(data) == 6 and data.classes == () and data.num_classes == 0
    assert data.labels.tolist() == [-1] * 6
    assert abs(int(data.images[2, 0, 0, 0]) - 20) == 0  # the png, exact


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((8, 8, 4), 99, np.uint8)).save(tmp_path / "rgba.png")
    data = load(tmp_path, "all")
    assert data.images.shape == (2, 8, 8, 3)
    assert data.images[0, 0, 0].tolist() == [77, 77, 77] and data.images[1, 0, 0].tolist() == [99, 99, 99]


def test_mixed_sizes_with_a_tie_follow_the_first_image(tmp_path: Path, png) -> None:
    png(tmp_path / "a.png", 10, (8, 12))  # first image: 8 high, 12 wide
    image = np.zeros((16, 48, 3), np.uint8)
    image[:, 8:40] = 200  # a bright centre between two dark 8-pixel side bands
    Image.fromarray(image).save(tmp_path / "b.png")
    data = load(tmp_path, "all")
    assert data.images.shape == (2, 8, 12, 3)
    # scaled to 8x24 then centre-cropped to 8x12 (source columns 12..36): no stretching, bands cut off
    assert np.all(data.images[1] == 200)


def test_image_size_makes_square(tmp_path: Path, png) -> None:
    png(tmp_path / "a.png", 10, (8, 12))
    png(tmp_path / "b.png", 20, (30, 30))
    data = load(tmp_path, "all", image_size=6)
    assert data.images.shape == (2, 6, 6, 3) and data.images[1, 3, 3, 0] == 20


def test_empty_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match=str(tmp_path / "empty" / "train")):
        load(tmp_path / "empty", "train")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match=f"no images found in {tmp_path / 'flat'}"):
        load(tmp_path / "flat", "all")


def test_missing_root_and_no_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load(tmp_path / "nope", "all")
    with pytest.raises(DataError, match="needs a root"):
        load_split("imagefolder", "all")


def test_corrupt_image_is_named(tmp_path: Path, png) -> None:
    for i in range(3):
        png(tmp_path / "c" / f"{i}.png", i)
    (tmp_path / "c" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"1\.png"):
        load(tmp_path, "all")


def test_corrupt_image_is_named_with_the_process_pool(tmp_path: Path, png, monkeypatch: pytest.MonkeyPatch) -> None:
    from relssl.data import decode

    monkeypatch.setattr(decode, "_MIN_FOR_PROCESSES", 1)
    files = [tmp_path / f"{i:02d}.png" for i in range(40)]
    for i, path in enumerate(files):
        png(path, i)
    files[33].write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"33\.png"):
        decode.decode_images(files, (8, 8), progress=False, workers=2)
    files[33].unlink()
    images = decode.decode_images(files[:33], (8, 8), progress=False, workers=2)
    assert images[:, 0, 0, 0].tolist() == list(range(33))


def test_loose_images_next_to_sub_folders_are_all_unlabelled(tmp_path: Path, png) -> None:
    png(tmp_path / "album" / "deeper" / "a.png", 1)
    png(tmp_path / "loose.png", 2)
    data = load(tmp_path, "all")
    assert data.classes == () and data.labels.tolist() == [-1, -1]
    assert sorted(data.images[:, 0, 0, 0].tolist()) == [1, 2]


def test_loose_images_next_to_class_folders_of_a_split_folder_is_an_error(tmp_path: Path, png) -> None:
    png(tmp_path / "train" / "cls" / "a.png", 1)
    png(tmp_path / "train" / "loose.png", 2)
    with pytest.raises(DataError, match="both image files"):
        load(tmp_path, "train")


def test_hidden_entries_are_skipped(tmp_path: Path, png) -> None:
    png(tmp_path / "a" / "x.png", 1)
    png(tmp_path / ".hidden" / "y.png", 2)
    png(tmp_path / "a" / ".z.png", 3)
    data = load(tmp_path, "all")
    assert data.classes == ("a",) and len(data) == 1
