"""STL-10, official binary format: 96x96 images, 10 classes, plus 100,000 unlabeled images.

Files (`stl10_binary/` as unpacked from the official archive): `{train,test}_X.bin`,
`{train,test}_y.bin`, `unlabeled_X.bin`, `class_names.txt`. X files are raw uint8, per image
the red, green and blue 96x96 planes, each stored column-major; viewed as (N, 3, 96, 96) the
last two axes are (x, y), so (N, y, x, channel) is a transpose by (0, 3, 2, 1). y files hold
one uint8 label 1..10 per image, stored here as 0..9. The unlabeled split has labels -1.
The X files are memory-mapped and copied in blocks, so the 2.8 GB unlabeled split never has
to fit in memory twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from relssl.data.arrays import ImageArrays
from relssl.data.download import Archive, ensure_extracted
from relssl.data.registry import register_dataset
from relssl.data.resize import resize_images
from relssl.data.source import Source
from relssl.errors import DataError

STL10_ARCHIVE = Archive(
    "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "stl10_binary.tar.gz",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
)
SPLITS = ("train", "test", "unlabeled")
SIZE = 96
_IMAGE_BYTES = 3 * SIZE * SIZE
_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
          "unlabeled": ("unlabeled_X.bin", None)}


def read_images(path: Path) -> np.ndarray:
    """An X file as a lazy uint8 (N, 96, 96, 3) view of its memory map."""
    size = path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise DataError(f"{path} has {size} bytes, not a multiple of {_IMAGE_BYTES} (one 3x96x96 image). "
                        "It is truncated or corrupt; delete it and download again.")
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(size // _IMAGE_BYTES, 3, SIZE, SIZE))
    return raw.transpose(0, 3, 2, 1)


def read_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    """A y file (labels 1..num_classes) as int64 0..num_classes-1, checked against the image count."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.shape[0] != count or (raw.size and (raw.min() < 1 or raw.max() > num_classes)):
        raise DataError(f"{path} has {raw.shape[0]} labels for {count} images or labels outside 1..{num_classes}. "
                        "Delete it and download again.")
    return raw.astype(np.int64) - 1


def read_class_names(path: Path) -> tuple[str, ...]:
    """class_names.txt: one name per line."""
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


@register_dataset("stl10", splits=SPLITS, default_root="stl10", pretrain_split="unlabeled",
                  summary="STL-10 (binary format); pretrains on its 100k unlabelled images")
def source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """STL-10 `split` ("train", "test" or "unlabeled") under `root` (or `root/stl10_binary`)."""
    base = root if (root / "class_names.txt").exists() else root / "stl10_binary"
    x_name, y_name = _FILES[split]
    x_path, names_path = base / x_name, base / "class_names.txt"
    y_path = base / y_name if y_name else None
    files = [x_path, names_path] + ([y_path] if y_path else [])
    ensure_extracted(root, files, STL10_ARCHIVE, dataset="stl10", download_allowed=download, progress=progress)

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        classes = read_class_names(names_path)
        images = read_images(x_path)
        if y_path is None:
            labels = np.full(images.shape[0], -1, dtype=np.int64)
        else:
            labels = read_labels(y_path, images.shape[0], len(classes))
        if image_size is not None and image_size != SIZE:
            images = resize_images(images, image_size, progress=progress, desc=f"resize stl10/{split}")
        return ImageArrays(images, labels, classes)

    return Source(split, tuple(files), build, {"format": "stl10-binary"})
