"""`load_split`: locate a split of any registered dataset, then decode it once into the cache."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

from relssl.data import cache
from relssl.data.arrays import ImageArrays
from relssl.data.listing import Listing, keep_classes, read_class_list
from relssl.data.paths import can_create_in
from relssl.data.registry import DATASETS, dataset_spec
from relssl.errors import DataError, RelsslWarning

__all__ = ["load_listing", "load_split", "resolve_root"]

_VERIFIED: set[tuple[str, str]] = set()  # (cache folder, key) fully verified by this process


def load_split(
    name: str,
    split: str,
    root: str | Path | None = None,
    *,
    download: bool = True,
    cache_dir: str | Path | None = None,
    image_size: int | None = None,
    progress: bool = True,
    verify: bool = False,
) -> ImageArrays:
    """Read one split of a dataset as uint8 images, decoding the source files only the first time.

    `root` defaults to `./data/<default root>` (`./data/cifar100` for cifar100-20); in-memory
    datasets such as digits ignore it and imagefolder requires it. `download=False` (the CLI's `--no-download`) turns missing files into
    a DataError instead of a download. `image_size` brings every image to image_size x image_size
    (None: the dataset's native size). The decoded split is stored under `cache_dir` (default
    `<root>/.relssl_cache`, see relssl.data.cache) and memory-mapped from there on later calls.
    `verify` (config key data.verify_cache) checks the whole cache and the content of the source
    files against the digests recorded with it, not just the cheap default checks; a cache that
    fails is rebuilt with a RelsslWarning. A disk too full for the cache is a DataError.
    """
    dataset = dataset_spec(name)
    if split not in dataset.splits:
        raise DataError(f"unknown split {split!r} of {name}; choose from {', '.join(dataset.splits)}")
    if image_size is not None and (not isinstance(image_size, (int, np.integer)) or image_size < 1):
        raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
    if dataset.load_in_memory is not None:
        return dataset.load_in_memory(split, image_size)
    root_path = resolve_root(name, root)
    assert dataset.source is not None  # a file dataset (DatasetSpec checks that it has one of the two)
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
    sources_digest = functools.cache(lambda: cache.content_digest(source.files, root_path))
    for base in bases:
        folder = base / folder_name
        # One full verification per cache and process: evaluation after training reads it again.
        full_check = verify and (str(folder), key) not in _VERIFIED
        hit = cache.load(folder, key, verify=full_check, sources_digest=sources_digest)
        if hit is not None:
            if full_check:
                _VERIFIED.add((str(folder), key))
            return hit
    arrays = source.build(image_size, progress)
    info = {"dataset": name, "split": source.split, "image_size": image_size, "root": str(root_path)}
    failures: list[str] = []
    full: list[cache.NoSpaceError] = []
    for base in bases:
        try:
            stored = cache.store(base / folder_name, key, arrays, info, sources_digest=sources_digest())
        except cache.NoSpaceError as exc:
            full.append(exc)
            continue
        except OSError as exc:
            failures.append(f"{base / folder_name}: {exc}")
            continue
        if full:
            free = "unknown" if full[0].free is None else full[0].free
            warnings.warn(f"no space left to write the decode cache {full[0].folder} ({full[0].needed} bytes "
                          f"needed, {free} free); stored in {base / folder_name} instead.", RelsslWarning, stacklevel=2)
        return stored
    if full:  # the disk is full: continuing in memory would only fail later (checkpoints, logs)
        raise full[0]
    if cache_dir is not None:
        raise DataError(f"cannot write the decode cache ({'; '.join(failures)}). Pass a writable cache_dir.")
    warnings.warn(f"relssl: decode cache not written ({'; '.join(failures)}); the split will be decoded again "
                  "next time. Pass a writable cache_dir to avoid this.", stacklevel=2)
    return ImageArrays(np.ascontiguousarray(arrays.images), arrays.labels, arrays.classes)


def resolve_root(name: str, root: str | Path | None) -> Path:
    """The absolute folder of dataset `name`: `root`, else ./data/<its default root> (a DataError if it has none)."""
    if root is None:
        default = dataset_spec(name).default_root
        if default is None:
            raise DataError(f"dataset {name!r} needs a root: the folder that holds the images "
                            "(--data-root DIR, config key data.root)")
        root = Path("data") / default
    return Path(root).expanduser().absolute()


def load_listing(name: str, split: str, root: str | Path | None = None, *, class_list: str | None = None) -> Listing:
    """The image files and labels of one split, for the streaming reader (no decoding).

    `class_list` keeps the classes a file names (one per line), relabelled in its order.
    """
    dataset = dataset_spec(name)
    if dataset.listing is None:
        streamable = ", ".join(d.name for d in DATASETS if d.listing is not None)
        raise DataError(f"dataset {name!r} is not a folder of image files, so it cannot stream; "
                        f"drop data.stream (streamable: {streamable})")
    if split not in dataset.splits:
        raise DataError(f"unknown split {split!r} of {name}; choose from {', '.join(dataset.splits)}")
    listing = dataset.listing(resolve_root(name, root), split)
    return keep_classes(listing, read_class_list(class_list)) if class_list else listing
