"""The labelled splits an evaluation protocol reads, with the dataset's default evaluation splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relssl.data import ImageArrays, dataset_spec, load_split
from relssl.errors import DataError

__all__ = ["EvalData", "eval_splits"]


def eval_splits(dataset: str, train_split: str | None = None, test_split: str | None = None) -> tuple[str, str]:
    """The labelled (train, test) splits to evaluate on: the given ones, else the dataset's defaults."""
    default_train, default_test = dataset_spec(dataset).eval_splits
    return train_split or default_train, test_split or default_test


@dataclass(frozen=True)
class EvalData:
    """The labelled train and test splits used by the evaluation protocols."""

    train: ImageArrays
    test: ImageArrays

    @classmethod
    def load(cls, dataset: str, root: str | None, *, train_split: str | None = None, test_split: str | None = None,
             download: bool = True, cache_dir: str | None = None, image_size: int | None = None,
             progress: bool = True) -> EvalData:
        """Read both splits (the dataset's evaluation splits by default), checking that they are labelled."""
        train_split, test_split = eval_splits(dataset, train_split, test_split)
        train = load_split(dataset, train_split, root, download=download, cache_dir=cache_dir,
                           image_size=image_size, progress=progress)
        test = load_split(dataset, test_split, root, download=download, cache_dir=cache_dir,
                          image_size=image_size, progress=progress)
        for name, split in (("train", train), ("test", test)):
            if split.num_classes == 0 or (np.asarray(split.labels) < 0).any():
                raise DataError(
                    f"evaluation needs labels, but the {name} split of {dataset!r} has unlabelled "
                    "images; choose labelled splits (data.eval_train_split / data.eval_test_split)"
                )
        return cls(train=train, test=test)
