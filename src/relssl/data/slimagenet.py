"""SlimageNet64 (Antoniou et al. 2020, "Defining Benchmarks for Continual Few-Shot Learning").

What is known (the paper, its data-provider code and the Relational Reasoning code): the data
set is published at https://zenodo.org/record/3672132 as an archive that the authors' code
expects as `SlimageNet64.tar.bz2`; it unpacks to `SlimageNet64/{train,val,test}/<class>/<image>`
(200,000 64x64 images, 200 for each of the 1000 ImageNet classes, the three folders holding
disjoint sets of classes, as few-shot benchmarks need). Class folders are named `n` plus the
zero-padded 1-based class number of the downsampled-ImageNet release (`n0001`..`n1000`), and
`label_to_imagenet_class_mappings.txt` maps them to names with lines "<wnid> <number> <name>".

ASSUMED, not verified (no file listing or checksum of the Zenodo record could be read): the
archive name, the image file extension (any image extension is accepted) and the mapping-file
format (it is optional: without it, class names are the folder names). relssl therefore does
not download SlimageNet64; unpack it yourself so that `<root>/train/<class>/` exists (a
`<root>/SlimageNet64/` folder is also found).

Splits:
- "train", "val", "test": the official folders as they are on disk (class-disjoint in the
  official release). Labels index the sorted union of the class folders of all three, so they
  agree across splits. If the folders were re-arranged as the Relational Reasoning code asks
  (train/ and test/ holding all classes), these splits read that arrangement.
- "train160", "test40": the protocol of the Relational Reasoning paper (160 training images for
  each of the 1000 classes), which its authors do not publish as a file list. Our rule: pool each
  class's images from all official folders, sort them by file name, put the first 80%
  (160 of 200) in "train160" and the rest (40) in "test40".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from relssl.data import imagefolder
from relssl.data.arrays import ImageArrays
from relssl.data.registry import register_dataset
from relssl.data.source import Source
from relssl.errors import DataError

ZENODO_URL = "https://zenodo.org/record/3672132"
OFFICIAL_SPLITS = ("train", "val", "test")
SPLITS = (*OFFICIAL_SPLITS, "train160", "test40")
MAPPING_FILE = "label_to_imagenet_class_mappings.txt"
SIZE = 64
TRAIN_FRACTION = 0.8


def read_class_names(path: Path) -> dict[str, str]:
    """The mapping file ("<wnid> <number> <name>" lines) as {folder name: class name}, for both folder namings."""
    names: dict[str, str] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1].isdigit():
            name = " ".join(fields[2:])
            names[f"n{int(fields[1]):04d}"] = name
            names[fields[0]] = name
    return names


def _base(root: Path) -> Path:
    nested = root / "SlimageNet64"
    return nested if nested.is_dir() and not (root / "train").is_dir() else root


@register_dataset("slimagenet64", splits=SPLITS, default_root="slimagenet64", pretrain_split="train160",
                  eval_splits=("train160", "test40"),
                  summary="SlimageNet64; pretrains and evaluates on the 160/40 per-class parts of its train classes")
def source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """SlimageNet64 `split` under `root` (see the module docstring for the splits)."""
    base = _base(root)
    present = [s for s in OFFICIAL_SPLITS if (base / s).is_dir()]
    if "train" not in present:
        raise DataError(
            f"slimagenet64: expected {base / 'train'} (class folders of 64x64 images), which does not exist. "
            f"relssl cannot download SlimageNet64: get it from {ZENODO_URL} and unpack it into {root} "
            f"so that {root}/train/<class>/ exists."
        )
    folders = sorted({c for s in present for c in imagefolder.class_folders(base / s)})
    mapping_path = base / MAPPING_FILE
    mapping = read_class_names(mapping_path) if mapping_path.exists() else {}
    classes = tuple(mapping.get(folder, folder) for folder in folders)
    extra = (mapping_path,) if mapping_path.exists() else ()

    if split in OFFICIAL_SPLITS:
        if split not in present:
            raise DataError(f"slimagenet64: {base / split} does not exist; the splits on disk are {present}.")
        listing = imagefolder.labelled_listing(split, [base / split], folders)
    else:
        listing = _protocol_split(split, [base / s for s in present], folders)
    listing = imagefolder.require_images(imagefolder.Listing(listing.split, listing.files, listing.labels, classes),
                                         base / split if split in OFFICIAL_SPLITS else base)
    built = imagefolder.listing_source(listing, None, desc=f"decode slimagenet64/{split}", extra_files=extra)

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        return built.build(image_size if image_size is not None else SIZE, progress)

    return Source(built.split, built.files, build, {**built.params, "folders": folders})


def _protocol_split(split: str, folders: list[Path], classes: list[str]) -> imagefolder.Listing:
    """train160 / test40: per class, the first 80% of its images by file name, or the rest."""
    pooled = imagefolder.labelled_listing(split, folders, classes)
    files, labels = [], []
    for label in range(len(classes)):
        members = sorted((pooled.files[i] for i in np.flatnonzero(pooled.labels == label)), key=os.path.basename)
        cut = round(TRAIN_FRACTION * len(members))
        chosen = members[:cut] if split == "train160" else members[cut:]
        files += chosen
        labels += [label] * len(chosen)
    return imagefolder.Listing(split, files, np.asarray(labels, dtype=np.int64), tuple(classes))
