"""A split as a list of image files with their labels: what file readers produce before decoding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from relssl.errors import DataError

__all__ = ["Listing", "keep_classes", "read_class_list"]


@dataclass(frozen=True)
class Listing:
    """The files of one split with their labels (-1: unlabelled) and the class names, before decoding."""

    split: str
    files: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    class_ids: tuple[str, ...] = ()  # the names a class list may use instead (ImageNet's wnids); () = classes

    def __len__(self) -> int:
        return len(self.files)

    @property
    def ids(self) -> tuple[str, ...]:
        """What `data.class_list` entries are matched against: `class_ids`, else the class names."""
        return self.class_ids or self.classes


def read_class_list(path: str) -> list[str]:
    """A class-subset file: one class name (e.g. a WordNet id) per line; blank lines and `#` comments skipped."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()  # noqa: SIM115 - read at once
    except OSError as err:
        raise DataError(f"data.class_list: cannot read {path} ({err.strerror})") from None
    names = [line.split("#")[0].strip() for line in lines]
    names = [n for n in names if n]
    if not names or len(set(names)) != len(names):
        raise DataError(f"data.class_list: {path} must list distinct class names, one per line")
    return names


def keep_classes(listing: Listing, names: Sequence[str]) -> Listing:
    """Only the images of the classes `names` (class names or ids), relabelled 0..len(names)-1 in that order."""
    index = {name: i for i, name in enumerate(listing.ids)}
    index.update({name: i for i, name in enumerate(listing.classes) if name not in index})
    missing = [n for n in names if n not in index]
    if missing:
        raise DataError(f"data.class_list names {len(missing)} class(es) the {listing.split} split does not have, "
                        f"e.g. {missing[0]!r}")
    remap = np.full(len(listing.classes) + 1, -1, dtype=np.int64)  # the last slot maps label -1
    for new, name in enumerate(names):
        remap[index[name]] = new
    labels = remap[listing.labels]
    keep = np.flatnonzero(labels >= 0)
    classes = tuple(listing.classes[index[n]] for n in names)
    ids = tuple(listing.ids[index[n]] for n in names)
    return Listing(listing.split, [listing.files[i] for i in keep], labels[keep], classes, ids)
