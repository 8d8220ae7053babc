"""The dataset names, their splits, and `load_split`: locate a split, then decode it once into the cache."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from relssl.data import cache, cifar, digits, imagefolder, slimagenet, stl10, tiny_imagenet
from relssl.data.arrays import ImageArrays
from relssl.data.errors import DataError
from relssl.data.paths import can_create_in
from relssl.data.source import Source

DATASET_NAMES = (
    "digits", "cifar10", "cifar100", "cifar100-20", "stl10", "tiny-imagenet", "slimagenet64", "imagefolder",
)


@dataclass(frozen=True)
class _Dataset:
    splits: tuple[str, ...]
    default_root: str | None  # under ./data; None: no default (digits needs none, imagefolder requires one)
    source: Callable[..., Source] | None


_DATASETS: dict[str, _Dataset] = {
    "digits": _Dataset(digits.SPLITS, None, None),
    "cifar10": _Dataset(cifar.SPLITS, "cifar10", cifar.cifar10_source),
    "cifar100": _Dataset(cifar.SPLITS, "cifar100", cifar.cifar100_source),
    # The 20 coarse labels come from the same files, so the default root is shared with cifar100.
    "cifar100-20": _Dataset(cifar.SPLITS, "cifar100", partial(cifar.cifar100_source, coarse=True)),
    "stl10": _Dataset(stl10.SPLITS, "stl10", stl10.source),
    "tiny-imagenet": _Dataset(tiny_imagenet.SPLITS, "tiny-imagenet", tiny_imagenet.source),
    "slimagenet64": _Dataset(slimagenet.SPLITS, "slimagenet64", slimagenet.source),
    "imagefolder": _Dataset(imagefolder.SPLITS, None, imagefolder.source),
}
assert tuple(_DATASETS) == DATASET_NAMES


def _dataset(name: str) -> _Dataset:
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASET_NAMES)}")
    return _DATASETS[name]


def dataset_splits(name: str) -> tuple[str, ...]:
    """The split names `load_split` accepts for dataset `name` (e.g. stl10 -> train, test, unlabeled).

    tiny-imagenet's "test" is an alias for its labelled "val" split (the official test split
    has no labels); imagefolder's splits depend on the folder's shape (see relssl.data.imagefolder).
    """
    return _dataset(name).splits


def load_split(
    name: str,
    split: str,
    root: str | Path | None = None,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> ImageArrays:
    """Read one split of a dataset as uint8 images, decoding the source files only the first time.

    `root` defaults to `./data/<name>` (`./data/cifar100` for cifar100-20); digits ignores it and
    imagefolder requires it. `download=False` (the CLI's `--no-download`) turns missing files into
    a DataError instead of a download. `image_size` brings every image to image_size x image_size
    (None: the dataset's native size). The decoded split is stored under `cache_dir` (default
    `<root>/.relssl_cache`, see relssl.data.cache) and memory-mapped from there on later calls.
    """
    dataset = _dataset(name)
    if split not in dataset.splits:
        raise DataError(f"unknown split {split!r} of {name}; choose from {', '.join(dataset.splits)}")
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
    if name == "digits":
        return digits.load(split, image_size)
    if root is None:
        if dataset.default_root is None:
            raise DataError(f"dataset {name!r} needs a root: the folder that holds the images (--data-root DIR, config key data.root)")
        root = Path("data") / dataset.default_root
    root_path = Path(root).expanduser().absolute()
    assert dataset.source is not None
    source = dataset.source(root_path, split, download=download, progress=progress)
    params = {"version": cache.CACHE_VERSION, "dataset": name, "split": source.split,
              "image_size": image_size, **source.params}
    key = cache.fingerprint(source.files, root_path, params)
    folder_name = cache.cache_folder_name(name, source.split, image_size)
    if cache_dir is not None:
        bases = [Path(cache_dir).expanduser().absolute()]
        if not can_create_in(bases[0]):
            raise DataError(
                f"cache_dir {bases[0]} is not writable. Pass a writable cache_dir, or none for the default."
            )
    else:
        bases = cache.default_cache_bases(root_path)
    for base in bases:
        hit = cache.load(base / folder_name, key)
        if hit is not None:
            return hit
    arrays = source.build(image_size, progress)
    info = {"dataset": name, "split": source.split, "image_size": image_size, "root": str(root_path)}
    failures = []
    for base in bases:
        try:
            return cache.store(base / folder_name, key, arrays, info)
        except OSError as exc:
            failures.append(f"{base / folder_name}: {exc}")
    if cache_dir is not None:
        raise DataError(f"cannot write the decode cache ({'; '.join(failures)}). Pass a writable cache_dir.")
    warnings.warn(f"relssl: decode cache not written ({'; '.join(failures)}); the split will be decoded again "
                  "next time. Pass a writable cache_dir to avoid this.", stacklevel=2)
    return ImageArrays(np.ascontiguousarray(arrays.images), arrays.labels, arrays.classes)
