"""The labelled splits an evaluation protocol reads: decoded arrays, or file listings streamed batch by batch."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from relssl.augment import to_normalized
from relssl.data import DataConfig, ImageArrays, dataset_spec, load_split
from relssl.data.listing import Listing
from relssl.data.load import resolve_root
from relssl.data.stream import decode_rgb, eval_image, stream_features, streamed_listing
from relssl.errors import ConfigError, DataError
from relssl.evaluate.features import extract_features
from relssl.evaluate.keys import array_digest

__all__ = ["EvalData", "StreamedEvalData", "eval_splits", "open_eval_data"]


def eval_splits(dataset: str, train_split: str | None = None, test_split: str | None = None) -> tuple[str, str]:
    """The labelled (train, test) splits to evaluate on: the given ones, else the dataset's defaults."""
    default_train, default_test = dataset_spec(dataset).eval_splits
    return train_split or default_train, test_split or default_test


def _check_labelled(dataset: str, name: str, labels: np.ndarray, num_classes: int) -> None:
    if num_classes == 0 or (np.asarray(labels) < 0).any():
        raise DataError(
            f"evaluation needs labels, but the {name} split of {dataset!r} has unlabelled "
            "images; choose labelled splits (data.eval_train_split / data.eval_test_split)"
        )


@dataclass(frozen=True)
class EvalData:
    """The labelled train and test splits, decoded into uint8 arrays (the cached path)."""

    train: ImageArrays
    test: ImageArrays
    origin: dict[str, Any] = field(default_factory=dict)  # dataset, absolute root, split names, image size
    streamed = False

    @classmethod
    def load(cls, dataset: str, root: str | None, *, train_split: str | None = None, test_split: str | None = None,
             download: bool = True, cache_dir: str | None = None, image_size: int | None = None,
             progress: bool = True, verify: bool = False) -> EvalData:
        """Read both splits (the dataset's evaluation splits by default), checking that they are labelled."""
        train_split, test_split = eval_splits(dataset, train_split, test_split)
        train = load_split(dataset, train_split, root, download=download, cache_dir=cache_dir,
                           image_size=image_size, progress=progress, verify=verify)
        test = load_split(dataset, test_split, root, download=download, cache_dir=cache_dir,
                          image_size=image_size, progress=progress, verify=verify)
        for name, split in (("train", train), ("test", test)):
            _check_labelled(dataset, name, split.labels, split.num_classes)
        root_path = str(resolve_root(dataset, root)) if dataset_spec(dataset).source is not None else None
        origin = {"dataset": dataset, "root": root_path, "train": train_split, "test": test_split,
                  "image_size": image_size}
        return cls(train=train, test=test, origin=origin)

    def identity(self, name: str) -> dict[str, Any]:
        """What the images of a split are: where they come from, and digests of their labels and pixels."""
        split = self._split(name)
        return {**self.origin, "split": name, "labels": array_digest(np.asarray(split.labels), len(split.labels)),
                "images": array_digest(split.images)}

    def _split(self, name: str) -> ImageArrays:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def size(self, name: str) -> int:
        """Images in the `"train"` or `"test"` split."""
        return len(self._split(name))

    def labels(self, name: str) -> np.ndarray:
        """Int64 labels of the `"train"` or `"test"` split."""
        return np.asarray(self._split(name).labels, dtype=np.int64)

    def images(self, name: str, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), H, W, 3) images of a split (pictures of retrieval results)."""
        return np.asarray(self._split(name).images[rows])

    def features(self, backbone: nn.Module, name: str, *, mean: tuple[float, ...], std: tuple[float, ...],
                 size: int | None, batch_size: int = 512, device: torch.device, progress: bool = True) -> torch.Tensor:
        """Float32 CPU features of a split, the frozen backbone on the un-augmented images."""
        normalize = functools.partial(to_normalized, mean=mean, std=std, size=size)
        return extract_features(backbone.to(device), self._split(name).images, normalize=normalize,
                                batch_size=batch_size, device=device, progress=progress, desc=f"features ({name})")


@dataclass(frozen=True)
class StreamedEvalData:
    """The labelled train and test splits as file listings; each image resized and centre-cropped when read."""

    train: Listing
    test: Listing
    crop: int  # side of the evaluation crop
    resize: int  # shorter side before the crop
    workers: int | None = None
    dataset: str = ""
    streamed = True

    def identity(self, name: str) -> dict[str, Any]:
        """What a streamed split is: its files (paths, in order), labels and the evaluation crop."""
        split = self._split(name)
        files = hashlib.blake2b("\n".join(split.files).encode(), digest_size=16).hexdigest()
        return {"dataset": self.dataset, "split": name, "listing": split.split, "files": files,
                "labels": array_digest(np.asarray(split.labels), len(split.labels)), "crop": self.crop,
                "resize": self.resize}

    def _split(self, name: str) -> Listing:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    def size(self, name: str) -> int:
        return len(self._split(name))

    def labels(self, name: str) -> np.ndarray:
        return np.asarray(self._split(name).labels, dtype=np.int64)

    def images(self, name: str, rows: np.ndarray) -> np.ndarray:
        files = self._split(name).files
        return np.stack([eval_image(decode_rgb(files[int(r)]), self.crop, self.resize) for r in np.ravel(rows)]
                        ).reshape(*np.shape(rows), self.crop, self.crop, 3)

    def features(self, backbone: nn.Module, name: str, *, mean: tuple[float, ...], std: tuple[float, ...],
                 size: int | None, batch_size: int = 512, device: torch.device, progress: bool = True) -> torch.Tensor:
        normalize: Callable[[torch.Tensor], torch.Tensor] = functools.partial(to_normalized, mean=mean, std=std)
        return stream_features(backbone.to(device), self._split(name), size=self.crop, resize=self.resize,
                               normalize=normalize, batch_size=batch_size, device=device, workers=self.workers,
                               progress=progress, desc=f"features ({name})")


def open_eval_data(dataset: str, root: str | None, data: DataConfig, *, train_split: str | None = None,
                   test_split: str | None = None, crop: int | None = None,
                   progress: bool = True) -> EvalData | StreamedEvalData:
    """The evaluation splits, streamed when `data.stream` (or its automatic choice) says so, else decoded.

    `crop` is the streamed evaluation crop (the training crop size); the shorter side is first
    resized to `data.eval_resize`, by default crop * 256 / 224.
    """
    train_split, test_split = eval_splits(dataset, train_split, test_split)
    listing = streamed_listing(data, dataset, train_split, root)
    if listing is None:
        return EvalData.load(dataset, root, train_split=train_split, test_split=test_split, download=data.download,
                             cache_dir=data.cache_dir, image_size=data.image_size, progress=progress,
                             verify=data.verify_cache)
    test = streamed_listing(data.model_copy(update={"stream": True}), dataset, test_split, root)
    assert test is not None
    if test.classes != listing.classes:
        raise DataError(f"the {train_split} and {test_split} splits of {dataset!r} have other classes")
    side = crop or data.image_size or 224
    for name, split in (("train", listing), ("test", test)):
        _check_labelled(dataset, name, split.labels, len(split.classes))
    if side < 8:
        raise ConfigError(f"the evaluation crop must be at least 8 pixels, got {side}")
    return StreamedEvalData(listing, test, crop=side, resize=data.eval_resize or round(side * 256 / 224),
                            workers=data.workers, dataset=dataset)
