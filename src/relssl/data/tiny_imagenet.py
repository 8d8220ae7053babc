"""tiny-ImageNet-200 in the layout of the official zip: 200 classes of 64x64 JPEGs.

Files (`tiny-imagenet-200/`): `wnids.txt` (the 200 WordNet ids), `words.txt` (id <tab> names),
`train/<wnid>/images/*.JPEG` (500 per class), `val/images/*.JPEG` with `val/val_annotations.txt`
(filename <tab> wnid <tab> box...). Labels index the *sorted* wnids, the order torchvision's
ImageFolder gives `train/` and so the order of the reference Relational Reasoning code.
Class names are the first name of each wnid in words.txt.

Splits: "train" and "val". The official test split has no labels, so "test" is an alias for
"val" (the labelled 10,000 validation images, the usual tiny-ImageNet test set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from relssl.data import imagefolder
from relssl.data.arrays import ImageArrays
from relssl.data.download import Archive, ensure_extracted
from relssl.data.registry import register_dataset
from relssl.data.source import Source
from relssl.errors import DataError

TINY_IMAGENET_ARCHIVE = Archive(
    "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200.zip",
    md5="90528d7ca1a48142e341f4ef8d21d0de",
)
SPLITS = ("train", "val", "test")
SIZE = 64


def read_wnids(path: Path) -> list[str]:
    """wnids.txt: one WordNet id per line."""
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(f"{path} lists no WordNet ids or repeats one. Delete the folder and download again.")
    return wnids


def read_words(path: Path) -> dict[str, str]:
    """words.txt: wnid <tab> comma-separated names -> {wnid: first name}."""
    words = {}
    for line in path.read_text().splitlines():
        wnid, _, names = line.partition("\t")
        if names:
            words[wnid.strip()] = names.split(",")[0].strip()
    return words


def read_val_annotations(path: Path, images: Path, index: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """val_annotations.txt -> the val image files (sorted by name) and their int64 labels."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise DataError(f"{path} line {number} ({line!r}) does not start with a file name and a known wnid. "
                            "Delete the folder and download again.")
        entries.append((fields[0].strip(), index[fields[1].strip()]))
    entries.sort()
    files = [str(images / name) for name, _ in entries]
    missing = next((f for f in files if not os.path.exists(f)), None)
    if missing is not None:
        raise DataError(f"{missing} is listed in {path} but does not exist. Delete the folder and download again.")
    return files, np.asarray([label for _, label in entries], dtype=np.int64)


@register_dataset("tiny-imagenet", splits=SPLITS, default_root="tiny-imagenet",
                  summary="tiny-ImageNet (official zip layout; val labelled from val_annotations.txt)")
def source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """tiny-ImageNet `split` under `root` (or `root/tiny-imagenet-200`); "test" reads "val"."""
    base = root if (root / "wnids.txt").exists() else root / "tiny-imagenet-200"
    wnids_path, words_path = base / "wnids.txt", base / "words.txt"
    annotations = base / "val" / "val_annotations.txt"
    ensure_extracted(root, [wnids_path, words_path, base / "train", annotations], TINY_IMAGENET_ARCHIVE,
                     dataset="tiny-imagenet", download_allowed=download, progress=progress)
    wnids = sorted(read_wnids(wnids_path))
    words = read_words(words_path)
    classes = tuple(words.get(w, w) for w in wnids)
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files: list[str] = []
        labels: list[int] = []
        for wnid in wnids:
            folder = base / "train" / wnid
            found = imagefolder.list_images(folder / "images" if (folder / "images").is_dir() else folder)
            if not found:
                raise DataError(f"no images in {folder}/images for class {wnid}. Delete the folder and download again.")
            files += found
            labels += [index[wnid]] * len(found)
        listing = imagefolder.Listing("train", files, np.asarray(labels, dtype=np.int64), classes)
    else:
        val_files, val_labels = read_val_annotations(annotations, base / "val" / "images", index)
        listing = imagefolder.Listing("val", val_files, val_labels, classes)
    built = imagefolder.listing_source(listing, None, desc=f"decode tiny-imagenet/{listing.split}",
                                       extra_files=(wnids_path, words_path, annotations))

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        return built.build(image_size if image_size is not None else SIZE, progress)

    return Source(built.split, built.files, build, {**built.params, "wnids": wnids})
