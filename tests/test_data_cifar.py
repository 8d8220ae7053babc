"""CIFAR-10/100/100-20 readers on tiny files written in the official python-pickle layout."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from relssl.data import DataError, load_split
from relssl.data.unpickle import load_pickle

RNG = np.random.default_rng(0)


def py2_pickle(obj: object) -> bytes:
    """Pickle `obj` the way Python 2 cPickle (protocol 2) wrote the CIFAR files: str as byte strings,
    NumPy arrays via numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def string(data: bytes) -> None:
        out.extend(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<I", len(data)) + data)

    def integer(value: int) -> None:
        if 0 <= value < 256:
            out.extend(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            out.extend(b"M" + struct.pack("<H", value))
        else:
            out.extend(b"J" + struct.pack("<i", value))

    def write(o: object) -> None:
        if isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                write(key)
                write(value)
            out.extend(b"u")
        elif isinstance(o, list):
            out.extend(b"](")
            for item in o:
                write(item)
            out.extend(b"e")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, str):
            string(o.encode("latin1"))
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01(")
            for dim in o.shape:
                integer(dim)
            out.extend(b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R")  # dtype('u1'), then its state:
            out.extend(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")
            string(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    write(obj)
    out.extend(b".")
    return bytes(out)


def chw_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): the 1024 red values (row-major), then green, then blue."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth: dict[str, list] = {"train": [[], []], "test": [[], []]}
    for name, split, n in [*[(f"data_batch_{i}", "train", 2) for i in range(1, 6)], ("test_batch", "test", 3)]:
        images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in RNG.integers(0, 10, n)]
        batch = {"batch_label": f"batch {name}", "labels": labels, "data": chw_rows(images),
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(py2_pickle(batch))
        truth[split][0].append(images)
        truth[split][1].append(labels)
    meta = {"num_cases_per_batch": 2, "label_names": CIFAR10_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return {s: (np.concatenate(v[0]), np.concatenate(v[1]).astype(np.int64)) for s, v in truth.items()}


def make_cifar100(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    truth = {}
    for split, n in (("train", 6), ("test", 4)):
        images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = RNG.integers(0, 100, n)
        coarse = RNG.integers(0, 20, n)
        batch = {"filenames": [f"f{i}.png" for i in range(n)], "batch_label": split,
                 "fine_labels": [int(x) for x in fine], "coarse_labels": [int(x) for x in coarse],
                 "data": chw_rows(images)}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=4) if split == "test" else py2_pickle(batch))
        truth[split] = (images, fine.astype(np.int64), coarse.astype(np.int64))
    meta = {"fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)]}
    (folder / "meta").write_bytes(py2_pickle(meta))
    return truth


def test_py2_pickle_helper_matches_real_cifar_header() -> None:
    # The first bytes of the real data_batch_1, minus the memo (BINPUT) opcodes our helper leaves out.
    blob = py2_pickle({"data": np.zeros((1, 3072), np.uint8)})
    assert blob.startswith(b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")


def test_cifar10_pixels_labels_classes(tmp_path: Path) -> None:
    truth = make_cifar10(tmp_path / "c10")
    for split, n in (("train", 10), ("test", 3)):
        data = load_split("cifar10", split, tmp_path / "c10", download=False, progress=False)
        assert data.images.shape == (n, 32, 32, 3) and data.images.dtype == np.uint8
        np.testing.assert_array_equal(data.images, truth[split][0])
        np.testing.assert_array_equal(data.labels, truth[split][1])
        assert data.classes == tuple(CIFAR10_NAMES) and data.num_classes == 10 and len(data) == n


def test_cifar_chw_layout_is_row_major_red_plane_first(tmp_path: Path) -> None:
    truth = make_cifar10(tmp_path)
    data = load_split("cifar10", "train", tmp_path, download=False, progress=False)
    rows = chw_rows(truth["train"][0])
    # value 1 of a row is the red value of row 0, column 1; value 1024 the green of pixel (0, 0)
    assert data.images[0, 0, 1, 0] == rows[0, 1]
    assert data.images[0, 1, 0, 0] == rows[0, 32]
    assert data.images[0, 0, 0, 1] == rows[0, 1024]


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    truth = make_cifar10(tmp_path)
    data = load_split("cifar10", "test", tmp_path / "cifar-10-batches-py", download=False, progress=False)
    np.testing.assert_array_equal(data.images, truth["test"][0])


@pytest.mark.parametrize("name, column, num_classes", [("cifar100", 1, 100), ("cifar100-20", 2, 20)])
def test_cifar100_fine_and_coarse(tmp_path: Path, name: str, column: int, num_classes: int) -> None:
    truth = make_cifar100(tmp_path)
    for split in ("train", "test"):
        data = load_split(name, split, tmp_path, download=False, progress=False)
        np.testing.assert_array_equal(data.images, truth[split][0])
        np.testing.assert_array_equal(data.labels, truth[split][column])
        assert data.num_classes == num_classes
        assert data.classes[3] == ("fine3" if num_classes == 100 else "coarse3")


def test_cifar_image_size_resizes(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    data = load_split("cifar10", "test", tmp_path, download=False, progress=False, image_size=16)
    assert data.images.shape == (3, 16, 16, 3)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))

    def __init__(self, marker: Path) -> None:
        self.marker = marker


def test_restricted_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    make_cifar10(tmp_path)
    path.write_bytes(pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch.*(posix|os|nt)\.system"):
        load_split("cifar10", "test", tmp_path, download=False, progress=False)
    assert not marker.exists()
    with pytest.raises(DataError, match="not allowed"):
        load_pickle(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_builtins_eval(tmp_path: Path) -> None:
    path = tmp_path / "evil"
    path.write_bytes(b"\x80\x02c__builtin__\neval\nU\x0a1/0 or 'x'\x85R.")
    with pytest.raises(DataError, match=r"__builtin__\.eval"):
        load_pickle(path)


def test_corrupt_and_wrong_pickles_name_the_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load_split("cifar10", "train", tmp_path, download=False, progress=False)
    batch.write_bytes(py2_pickle({"labels": [1], "pixels": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DataError, match=r"data_batch_3 has no key 'data'"):
        load_split("cifar10", "train", tmp_path, download=False, progress=False)


def test_missing_files_without_download_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_split("cifar10", "train", tmp_path / "nothing", download=False, progress=False)
    message = str(info.value)
    assert str(tmp_path / "nothing" / "cifar-10-batches-py") in message
    assert "--no-download" in message and "cifar-10-python.tar.gz" in message


def test_cifar10_from_an_image_folder_uses_official_class_order(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for label, name in enumerate(reversed(CIFAR10_NAMES)):  # created in reverse order on purpose
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), label, np.uint8)).save(folder / "0000.png")
    data = load_split("cifar10", "test", tmp_path, download=False, progress=False)
    assert data.classes == tuple(CIFAR10_NAMES)
    for image, label in zip(data.images, data.labels):
        assert image[0, 0, 0] == 9 - label  # folder of CIFAR10_NAMES[label] was filled with 9 - label
