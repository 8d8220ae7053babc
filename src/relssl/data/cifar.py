"""CIFAR-10, CIFAR-100 (100 fine classes) and CIFAR-100-20 (its 20 coarse classes), official python format.

Files (as unpacked from the official archives):
`cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}` and
`cifar-100-python/{train, test, meta}`. Each batch is a pickled dict whose "data" is uint8
(N, 3072): per image the 1024 red, then green, then blue values of a row-major 32x32 plane;
it is reshaped to (N, 3, 32, 32) and transposed to (N, 32, 32, 3). Pickles are read with the
restricted unpickler (see relssl.data.unpickle).

CIFAR-10 can also be read from an image folder (`root/train/<class>/`, `root/test/<class>/`,
such as a JPEG export) when the pickles are absent and the class folders are exactly the ten
CIFAR-10 class names; labels then follow the official class order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from relssl.data import imagefolder
from relssl.data.arrays import ImageArrays
from relssl.data.download import Archive, ensure_extracted
from relssl.data.registry import register_dataset
from relssl.data.resize import resize_images
from relssl.data.source import Source
from relssl.data.unpickle import load_pickle
from relssl.errors import DataError

CIFAR10_ARCHIVE = Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR100_ARCHIVE = Archive(
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_batch(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """One pickled CIFAR dict with str keys, checked to contain `keys`."""
    raw = load_pickle(path)
    if not isinstance(raw, dict):
        raise DataError(f"{path} does not hold a dict; it is not a CIFAR python file. Delete it and download again.")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in raw.items()}
    for key in keys:
        if key not in batch:
            raise DataError(
                f"{path} has no key {key!r} (it has {sorted(batch)}); it is not the expected CIFAR file. "
                "Delete it and download again."
            )
    return batch


def batch_images(data: Any, path: Path) -> np.ndarray:
    """(N, 3072) CHW rows -> uint8 (N, 32, 32, 3)."""
    array = np.asarray(data)
    if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' is {array.dtype} {array.shape}, expected uint8 (N, 3072). Re-download it.")
    return np.ascontiguousarray(array.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def batch_labels(values: Any, path: Path, key: str, num_classes: int, count: int) -> np.ndarray:
    """A label list as int64, checked against the image count and the class range."""
    labels = np.asarray(values, dtype=np.int64).reshape(-1)
    if labels.shape[0] != count or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataError(f"{path}: {key!r} has {labels.shape[0]} labels for {count} images or values outside "
                        f"0..{num_classes - 1}. Re-download it.")
    return labels


def _names(values: Any) -> tuple[str, ...]:
    return tuple(v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values)


def _resized(arrays: ImageArrays, image_size: int | None, progress: bool, desc: str) -> ImageArrays:
    if image_size is None:
        return arrays
    return ImageArrays(resize_images(arrays.images, image_size, progress=progress, desc=desc),
                       arrays.labels, arrays.classes)


def _is_cifar10_folder(root: Path) -> bool:
    return all((root / s).is_dir() for s in SPLITS) and set(imagefolder.class_folders(root / "train")) == set(
        CIFAR10_CLASSES
    )


@register_dataset("cifar10", splits=SPLITS, default_root="cifar10")
def cifar10_source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """CIFAR-10 `split` ("train": data_batch_1..5, "test": test_batch) under `root`."""
    base = root if (root / "batches.meta").exists() else root / _CIFAR10_DIR
    if not base.exists() and _is_cifar10_folder(root):
        listing = imagefolder.labelled_listing(split, [root / split], CIFAR10_CLASSES)
        listing = imagefolder.require_images(listing, root / split)
        return imagefolder.listing_source(listing, listing.files[0], desc=f"decode cifar10/{split}")
    files = [base / name for name in _CIFAR10_FILES[split]]
    meta_path = base / "batches.meta"
    ensure_extracted(root, [*files, meta_path], CIFAR10_ARCHIVE, dataset="cifar10",
                     download_allowed=download, progress=progress)

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        classes = _names(read_batch(meta_path, ("label_names",))["label_names"])
        images, labels = [], []
        for path in files:
            batch = read_batch(path, ("data", "labels"))
            images.append(batch_images(batch["data"], path))
            labels.append(batch_labels(batch["labels"], path, "labels", len(classes), len(images[-1])))
        arrays = ImageArrays(np.concatenate(images), np.concatenate(labels), classes)
        return _resized(arrays, image_size, progress, f"resize cifar10/{split}")

    return Source(split, (*files, meta_path), build, {"format": "python-pickle"})


def cifar100_source(root: Path, split: str, *, coarse: bool = False, download: bool = True,
                    progress: bool = True) -> Source:
    """CIFAR-100 `split` under `root`: 100 fine labels, or the 20 coarse labels when `coarse`."""
    base = root if (root / "meta").exists() and (root / "train").is_file() else root / _CIFAR100_DIR
    path, meta_path = base / split, base / "meta"
    ensure_extracted(root, [path, meta_path], CIFAR100_ARCHIVE, dataset="cifar100-20" if coarse else "cifar100",
                     download_allowed=download, progress=progress)
    label_key, names_key = ("coarse_labels", "coarse_label_names") if coarse else ("fine_labels", "fine_label_names")
    name = "cifar100-20" if coarse else "cifar100"

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        classes = _names(read_batch(meta_path, (names_key,))[names_key])
        batch = read_batch(path, ("data", label_key))
        images = batch_images(batch["data"], path)
        labels = batch_labels(batch[label_key], path, label_key, len(classes), len(images))
        return _resized(ImageArrays(images, labels, classes), image_size, progress, f"resize {name}/{split}")

    return Source(split, (path, meta_path), build, {"format": "python-pickle", "labels": label_key})


@register_dataset("cifar100", splits=SPLITS, default_root="cifar100")
def cifar100_fine_source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """CIFAR-100 with its 100 fine labels."""
    return cifar100_source(root, split, download=download, progress=progress)


# The 20 coarse labels come from the same files, so the default root is shared with cifar100.
@register_dataset("cifar100-20", splits=SPLITS, default_root="cifar100")
def cifar100_coarse_source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """CIFAR-100 with its 20 coarse (superclass) labels."""
    return cifar100_source(root, split, coarse=True, download=download, progress=progress)
