"""What a reader hands to the loader: the files a split is read from and how to decode them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from relssl.data.arrays import ImageArrays

# build(image_size, progress) -> the decoded split; image_size None keeps the native size.
Builder = Callable[[int | None, bool], ImageArrays]


@dataclass(frozen=True)
class Source:
    """One split located on disk, not yet decoded.

    `files` are every file the split's pixels, labels or class names come from: their paths,
    sizes and modification times form the cache key, so editing any of them invalidates the
    decoded cache. `params` are further key material (layout choices, class lists).
    """

    split: str
    files: tuple[str | Path, ...]
    build: Builder
    params: Mapping[str, object] = field(default_factory=dict)
