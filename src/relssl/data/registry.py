"""The dataset registry: every dataset declares its name, splits and quirks in its own reader file.

    @register_dataset("my-set", splits=("train", "test"), default_root="my-set")
    def my_set_source(root, split, *, download, progress) -> Source: ...

A dataset is either read from files (a `SourceFactory`, decoded once into the uint8 cache) or
held in memory (`in_memory=True`: the function returns `ImageArrays` for a split and an
image size, like the built-in digits). `load_split` (relssl.data.load) reads any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from relssl.data.arrays import ImageArrays
from relssl.data.listing import Listing
from relssl.data.source import Source
from relssl.errors import DataError
from relssl.registry import Registry

__all__ = ["DATASETS", "DatasetSpec", "ListingFactory", "SourceFactory", "dataset_spec", "dataset_splits", "register_dataset"]


class SourceFactory(Protocol):
    """Locates one split of a dataset under `root` (downloading it when allowed), not yet decoded."""

    def __call__(self, root: Path, split: str, *, download: bool, progress: bool) -> Source: ...


InMemoryLoader = Callable[[str, "int | None"], ImageArrays]  # (split, image_size) -> the split


class ListingFactory(Protocol):
    """The image files of one split under `root` with their labels, for the streaming reader (no decoding)."""

    def __call__(self, root: Path, split: str) -> Listing: ...


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset and its quirks.

    `pretrain_split` is what `relssl train` pretrains on by default (STL-10: its unlabelled split);
    `eval_splits` the labelled (train, test) pair the evaluation protocols use by default.
    `default_root` is the folder under ./data when no root is given; None with a `source` means
    a root is required (imagefolder). `listing`, for datasets of image files, lists a split's
    files and labels so the streaming reader can decode them batch by batch instead of caching.
    """

    name: str
    splits: tuple[str, ...]
    source: SourceFactory | None = None
    load_in_memory: InMemoryLoader | None = None
    default_root: str | None = None
    pretrain_split: str = "train"
    eval_splits: tuple[str, str] = ("train", "test")
    summary: str = ""
    listing: ListingFactory | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.load_in_memory is None):
            raise ValueError(f"dataset {self.name!r}: give exactly one of a file source or an in-memory loader")
        for split in (self.pretrain_split, *self.eval_splits):
            if split not in self.splits:
                raise ValueError(f"dataset {self.name!r}: default split {split!r} is not one of {self.splits}")

    @property
    def needs_root(self) -> bool:
        """Whether a data root must be given (no default folder under ./data)."""
        return self.source is not None and self.default_root is None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(
    name: str,
    *,
    splits: tuple[str, ...],
    default_root: str | None = None,
    in_memory: bool = False,
    pretrain_split: str = "train",
    eval_splits: tuple[str, str] = ("train", "test"),
    summary: str = "",
    listing: ListingFactory | None = None,
    replace: bool = False,
) -> Callable[[Any], Any]:
    """Decorator registering a dataset's source factory (or, with `in_memory`, its split loader).

    `listing` makes a file dataset streamable (`data.stream`): see relssl.data.stream.
    """

    def decorate(fn: Any) -> Any:
        doc = summary or (fn.__doc__ or "").strip().split("\n")[0]
        DATASETS.add(DatasetSpec(
            name=name, splits=tuple(splits), source=None if in_memory else fn,
            load_in_memory=fn if in_memory else None, default_root=default_root,
            pretrain_split=pretrain_split, eval_splits=eval_splits, summary=doc, listing=listing,
        ), replace=replace)
        return fn

    return decorate


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset `name`; a DataError listing the choices when unknown."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS.names())}")
    return DATASETS.get(name)


def dataset_splits(name: str) -> tuple[str, ...]:
    """The split names `load_split` accepts for dataset `name` (e.g. stl10 -> train, test, unlabeled).

    tiny-imagenet's "test" is an alias for its labelled "val" split (the official test split
    has no labels); imagefolder's splits depend on the folder's shape (see relssl.data.imagefolder).
    """
    return dataset_spec(name).splits
