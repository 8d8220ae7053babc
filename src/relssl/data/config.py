"""The `data` config section: which dataset, where it lives, and which splits a run uses."""

from __future__ import annotations

from pydantic import Field, field_validator

from relssl.config import Section
from relssl.data.registry import DATASETS, dataset_spec

__all__ = ["DataConfig", "check_dataset_name"]


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
    train_split: str | None = None  # None: the dataset's natural pretraining split (stl10: unlabeled)
    eval_train_split: str | None = None  # None: the dataset's labelled train split ("train160" for slimagenet64)
    eval_test_split: str | None = None  # None: the dataset's labelled test split ("test40" for slimagenet64)

    _known_dataset = field_validator("dataset")(check_dataset_name)

    def pretrain_split(self) -> str:
        """The split pretraining reads: `train_split`, else the dataset's default."""
        return self.train_split or dataset_spec(self.dataset).pretrain_split
