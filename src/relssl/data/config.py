"""The `data` config section: which dataset, where it lives, and which splits a run uses."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from relssl.config import Section
from relssl.data.registry import DATASETS, dataset_spec

__all__ = ["STREAM_ABOVE_GIB", "DataConfig", "check_dataset_name"]

#: `data.stream` unset: a file dataset streams when its decode cache would be larger than this.
STREAM_ABOVE_GIB = 8.0


def check_dataset_name(name: str) -> str:
    """`name` when it is a registered dataset, else a ValueError listing the choices."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS.names())}")
    return name


class DataConfig(Section):
    """Which images to train and evaluate on; unset splits take the dataset's own defaults."""

    dataset: str = "digits"
    root: str | None = None
    download: bool = True
    image_size: int | None = Field(default=None, ge=8)
    cache_dir: str | None = None
    # Check the whole decode cache and the content of its source files on every load (see relssl.data.cache):
    # catches a cache altered in place and a source file replaced with the same size and mtime; reads everything.
    verify_cache: bool = False
    train_split: str | None = None  # None: the dataset's natural pretraining split (stl10: unlabeled)
    eval_train_split: str | None = None  # None: the dataset's labelled train split ("train160" for slimagenet64)
    eval_test_split: str | None = None  # None: the dataset's labelled test split ("test40" for slimagenet64)
    # The streaming reader (relssl.data.stream, docs/PERFORMANCE.md): images decoded batch by batch in
    # DataLoader workers, random-resized crops taken from the full-size image. None: on for file
    # datasets whose decode cache would exceed STREAM_ABOVE_GIB, off otherwise.
    stream: bool | None = None
    decode: Literal["cpu", "gpu"] = "cpu"  # streaming: decode JPEGs in the workers, or batched on the GPU
    workers: int | None = Field(default=None, ge=0)  # streaming DataLoader workers; None: the CPUs available
    strict: bool = False  # streaming: stop at an unreadable image instead of skipping it (counted in metrics)
    class_list: str | None = None  # streaming: a file of class names (one per line) to keep, e.g. ImageNet-100
    eval_resize: int | None = Field(default=None, ge=8)  # streaming evaluation: shorter side before the
    # centre crop; None: size * 256 / 224 (ImageNet's 256 -> 224)

    _known_dataset = field_validator("dataset")(check_dataset_name)

    def pretrain_split(self) -> str:
        """The split pretraining reads: `train_split`, else the dataset's default."""
        return self.train_split or dataset_spec(self.dataset).pretrain_split
