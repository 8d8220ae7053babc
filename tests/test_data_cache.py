"""The decode-once cache: hits, invalidation, location and fallbacks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from relssl.data import DataError, load_split


@pytest.fixture
def make_folder(png):
    """`make_folder(root)`: two classes of three 4x4 PNGs in train/, one in test/."""

    def make(root: Path) -> None:
        for c in ("a", "b"):
            for i in range(3):
                png(root / "train" / c / f"{i}.png", 10 * (c == "b") + i, size=(4, 4))
        png(root / "test" / "a" / "0.png", 99, size=(4, 4))

    return make


def load(root: Path, split: str = "train", **kw):
    return load_split("imagefolder", split, root, download=False, progress=False, **kw)


@pytest.fixture
def no_decode(monkeypatch: pytest.MonkeyPatch):
    """After enabling, any attempt to decode images fails: only the cache can answer."""

    def enable() -> None:
        def fail(*args, **kwargs):
            raise AssertionError("decoded again instead of using the cache")

        monkeypatch.setattr("relssl.data.imagefolder.decode_images", fail)

    return enable


def test_second_load_is_a_memmapped_cache_hit(tmp_path: Path, no_decode, make_folder) -> None:
    make_folder(tmp_path)
    first = load(tmp_path)
    folder = tmp_path / ".relssl_cache" / "imagefolder_train"
    assert sorted(p.name for p in folder.iterdir()) == ["images.npy", "labels.npy", "meta.json"]  # no temp files
    no_decode()
    second = load(tmp_path)
    assert isinstance(second.images, np.memmap) and not second.images.flags.writeable
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.classes == first.classes == ("a", "b")


def test_splits_and_sizes_get_their_own_cache(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path)
    load(tmp_path)
    load(tmp_path, "test")
    load(tmp_path, image_size=2)
    names = sorted(p.name for p in (tmp_path / ".relssl_cache").iterdir())
    assert names == ["imagefolder_test", "imagefolder_train", "imagefolder_train_2"]
    assert load(tmp_path, "test").images[0, 0, 0, 0] == 99


def test_changed_added_and_removed_files_invalidate(tmp_path: Path, make_folder, png) -> None:
    make_folder(tmp_path)
    assert load(tmp_path).images[1, 0, 0, 0] == 1
    target = tmp_path / "train" / "a" / "1.png"
    png(target, 42, size=(4, 4))
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))  # a different mtime even on coarse clocks
    assert load(tmp_path).images[1, 0, 0, 0] == 42
    png(tmp_path / "train" / "a" / "3.png", 7, size=(4, 4))
    assert len(load(tmp_path)) == 7
    (tmp_path / "train" / "b" / "0.png").unlink()
    data = load(tmp_path)
    assert len(data) == 6 and data.labels.tolist() == [0, 0, 0, 0, 1, 1]


def test_corrupt_cache_is_rebuilt(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path)
    expected = np.array(load(tmp_path).images)
    images = tmp_path / ".relssl_cache" / "imagefolder_train" / "images.npy"
    images.write_bytes(images.read_bytes()[:50])
    np.testing.assert_array_equal(load(tmp_path).images, expected)


def test_explicit_cache_dir(tmp_path: Path, no_decode, make_folder) -> None:
    make_folder(tmp_path / "data")
    load(tmp_path / "data", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "imagefolder_train" / "meta.json").exists()
    assert not (tmp_path / "data" / ".relssl_cache").exists()
    no_decode()
    assert len(load(tmp_path / "data", cache_dir=tmp_path / "cache")) == 6


def test_read_only_root_falls_back_to_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_decode,
                                                 make_folder) -> None:
    root = tmp_path / "shared"
    make_folder(root)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root.chmod(0o555)
    try:
        load(root)
        assert not (root / ".relssl_cache").exists()  # even when running as root
        digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
        assert (tmp_path / "xdg" / "relssl" / digest / "imagefolder_train" / "meta.json").exists()
        no_decode()
        assert len(load(root)) == 6
    finally:
        root.chmod(0o755)


def test_unwritable_explicit_cache_dir_is_an_error(tmp_path: Path, make_folder) -> None:
    make_folder(tmp_path / "data")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(DataError, match="not writable"):
            load(tmp_path / "data", cache_dir=locked / "cache")
        assert not (locked / "cache").exists()
    finally:
        locked.chmod(0o755)


def test_array_datasets_are_cached_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from relssl.data import stl10

    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    np.arange(2 * 3 * 96 * 96, dtype=np.uint64).astype(np.uint8).tofile(folder / "test_X.bin")
    np.array([1, 10], np.uint8).tofile(folder / "test_y.bin")
    first = load_split("stl10", "test", tmp_path, download=False, progress=False)
    monkeypatch.setattr(stl10, "read_images", lambda path: (_ for _ in ()).throw(AssertionError("re-read")))
    second = load_split("stl10", "test", tmp_path, download=False, progress=False)
    assert isinstance(second.images, np.memmap)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.labels.tolist() == [0, 9]
