"""The label-free statistics every run reports: the backbones' features of a sample of the training images.

They are measured on the un-augmented images with the evaluation transform, on a seeded sample
of at most `eval.stats_images` of them, for the learned backbone and, when given, its random init
(docs/protocols/feature-stats.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from relssl.augment import AugmentConfig, to_normalized
from relssl.data.stream import StreamLoader, stream_sample
from relssl.evaluate.feature_stats import feature_stats
from relssl.evaluate.features import extract_features
from relssl.train.config import RunConfig
from relssl.train.inputs import eval_resize

__all__ = ["label_free_metrics", "training_sample"]


def training_sample(config: RunConfig, images: np.ndarray | None, stream: object) -> np.ndarray:
    """uint8 (n, H, W, 3): a seeded sample of at most eval.stats_images training images, sorted by index.

    Decoded runs take rows of `images`; streamed runs (`stream` a StreamLoader) decode a sample of
    their files to the evaluation crop.
    """
    count = config.eval.stats_images
    if images is not None:
        rows = np.arange(len(images))
        if len(rows) > count:
            rows = np.sort(np.random.default_rng(config.seed).choice(len(rows), count, replace=False))
        return np.asarray(images[rows])
    if not isinstance(stream, StreamLoader):
        raise TypeError(f"expected decoded images or a StreamLoader, got {type(stream).__name__}")
    crop = stream.crops.size
    return stream_sample(stream.listing, crop, eval_resize(config, crop), count=count, seed=config.seed,
                         workers=config.data.workers)


def label_free_metrics(config: RunConfig, images: np.ndarray | None, stream: object,
                       backbones: dict[str, nn.Module], aug_cfg: AugmentConfig, device: torch.device,
                       log: Callable[[str], None]) -> dict[str, Any]:
    """`<prefix>feature_stats` of each backbone of `backbones` (prefix -> backbone), one log line each.

    `images` and `stream` are the trainer's (see `training_sample`).
    """
    sample = training_sample(config, images, stream)
    mean, std = aug_cfg.normalization()
    size = aug_cfg.size if images is not None else None  # streamed samples come at the crop size
    normalize = functools.partial(to_normalized, mean=mean, std=std, size=size)
    out: dict[str, Any] = {}
    for prefix, backbone in backbones.items():
        features = extract_features(backbone.to(device), sample, normalize=normalize,
                                    batch_size=config.eval.feature_batch_size, device=device)
        stats = feature_stats(features[torch.isfinite(features).all(dim=1)])
        out[f"{prefix}feature_stats"] = stats
        who = "random-init backbone" if prefix else "learned backbone"
        log(f"feature statistics, {who} ({stats['images']} training images): effective rank "
            f"{stats['effective_rank']:.1f} of {stats['feature_dim']}, uniformity {stats['uniformity']:.2f}, "
            f"collapsed dimensions {100 * stats['collapsed_share']:.0f} %")
    return out
