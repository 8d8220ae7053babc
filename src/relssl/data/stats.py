"""Per-channel statistics of a uint8 image split, used to normalise the backbone's input."""

from __future__ import annotations

import numpy as np

__all__ = ["channel_stats"]


def channel_stats(images: np.ndarray, max_images: int = 10_000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0-1 scale) of uint8 NHWC images, from a seeded subset."""
    n = len(images)
    if n > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
        images = images[idx]
    x = np.asarray(images, dtype=np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    std = np.where(std < 1e-3, 1.0, std)  # a constant channel would divide by ~0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
