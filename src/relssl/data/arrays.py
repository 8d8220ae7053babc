"""The in-memory form of every dataset split: uint8 images, int64 labels and class names."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageArrays:
    """One split of a dataset, decoded: what every reader returns and every method consumes.

    `images` is uint8 (N, H, W, 3), often a read-only `np.memmap` of the decode cache;
    `labels` is int64 (N,), -1 for unlabeled images; `classes[i]` names label i.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be int64 ({images.shape[0]},), got {labels.dtype} {labels.shape}")
        if not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))
        if labels.size and (int(labels.min()) < -1 or int(labels.max()) >= len(self.classes)):
            raise ValueError(f"labels must lie in [-1, {len(self.classes)}), got [{labels.min()}, {labels.max()}]")

    @property
    def num_classes(self) -> int:
        """Number of named classes (0 for an unlabeled split)."""
        return len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])
