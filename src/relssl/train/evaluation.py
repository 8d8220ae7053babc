"""Linear evaluation of a backbone on a dataset's labelled splits, with cached features."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from relssl.augment import to_normalized
from relssl.config import EvalConfig
from relssl.data import ImageArrays, load_split
from relssl.evaluate import FeatureCache, LinearEvalConfig, LinearEvalResult, extract_features, linear_evaluation


@dataclass(frozen=True)
class EvalData:
    """The labelled train and test splits used by linear evaluation."""

    train: ImageArrays
    test: ImageArrays

    @classmethod
    def load(cls, dataset: str, root: str | None, *, train_split: str = "train", test_split: str = "test",
             download: bool = True, cache_dir: str | None = None, image_size: int | None = None,
             progress: bool = True) -> "EvalData":
        """Read both splits, checking that the train split is labelled."""
        kwargs = dict(download=download, cache_dir=cache_dir, image_size=image_size, progress=progress)
        train = load_split(dataset, train_split, root, **kwargs)
        test = load_split(dataset, test_split, root, **kwargs)
        for name, split in (("train", train), ("test", test)):
            if split.num_classes == 0 or (np.asarray(split.labels) < 0).any():
                raise ValueError(
                    f"linear evaluation needs labels, but the {name} split of {dataset!r} has unlabelled "
                    "images; choose labelled splits (data.eval_train_split / data.eval_test_split)"
                )
        return cls(train=train, test=test)


def evaluate_linear(
    backbone: nn.Module,
    data: EvalData,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    config: LinearEvalConfig,
    device: torch.device,
    cache: FeatureCache | None = None,
    cache_key: str | None = None,
    size: int | None = None,
    feature_batch_size: int = 512,
    progress: bool = True,
) -> LinearEvalResult:
    """Extract (or reuse cached) frozen features of both splits, then fit and score a linear layer."""
    backbone = backbone.to(device)
    normalize = functools.partial(to_normalized, mean=mean, std=std, size=size)
    feats = {}
    for split_name, split in (("train", data.train), ("test", data.test)):
        key = f"{cache_key}-{split_name}" if cache_key else None
        cached = cache.get(key) if cache is not None and key else None
        if cached is None:
            cached = extract_features(
                backbone, split.images, normalize=normalize, batch_size=feature_batch_size,
                device=device, progress=progress, desc=f"features ({split_name})",
            )
            if cache is not None and key:
                cache.put(key, cached)
        feats[split_name] = cached
    return linear_evaluation(
        feats["train"], torch.from_numpy(np.array(data.train.labels, dtype=np.int64)),
        feats["test"], torch.from_numpy(np.array(data.test.labels, dtype=np.int64)),
        config, num_classes=data.train.num_classes, device=device, progress=progress,
    )


def linear_eval_config(ev: EvalConfig, *, standardize: bool | None = None, seed: int = 0) -> LinearEvalConfig:
    """The linear probe's settings from a run's `eval` config section.

    `standardize` overrides `eval.standardize` (for the extra z-scored report).
    """
    return LinearEvalConfig(
        epochs=ev.epochs, lr=ev.lr, batch_size=ev.batch_size, weight_decay=ev.weight_decay,
        standardize=ev.standardize if standardize is None else standardize, seed=seed,
        optimizer=ev.optimizer, schedule=ev.schedule, momentum=ev.momentum,
        lr_reference_batch=ev.lr_reference_batch, top5=ev.top5,
    )


def feature_cache(run_dir: Path) -> FeatureCache:
    """The feature cache of a run directory."""
    return FeatureCache(run_dir / "features")
