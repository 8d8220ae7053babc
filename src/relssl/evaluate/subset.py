"""Class-balanced labelled subsets for the semi-supervised protocol (paper 2, Table 2: 1% and 10% labels)."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["balanced_subset", "per_class_count"]


def per_class_count(fraction: float, class_size: int) -> int:
    """Images kept from a class of ``class_size``: ``round(fraction * class_size)``, at least 1.

    Python's ``round`` (an exact half goes to the even neighbour); never more than the class holds.
    """
    return min(class_size, max(1, round(fraction * class_size)))


def balanced_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset holding ``per_class_count(fraction, n_c)`` images of every class c.

    Each class's images are drawn without replacement from one ``numpy`` generator seeded with
    ``seed``, classes in increasing label order, so the same labels and seed give the same subset
    and another seed gives another. Labels must all be known (no -1) and ``0 < fraction <= 1``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 1:
        raise ValueError(f"eval.label_fraction must be a number with 0 < fraction <= 1, got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"the subset seed must be a non-negative integer, got {seed!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a non-empty 1-D array of integer class indices, got {labels.dtype} "
                         f"{labels.shape}")
    if (labels < 0).any():
        raise ValueError("a labelled subset needs a fully labelled split (labels of -1 found)")
    rng = np.random.default_rng(seed)
    picked = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        picked.append(rng.choice(members, per_class_count(fraction, len(members)), replace=False))
    return np.sort(np.concatenate(picked))
