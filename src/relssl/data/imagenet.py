"""ImageNet-1k (ILSVRC2012) in the usual on-disk layouts; not downloadable (it needs a login).

Files under `root` (or under `root/ILSVRC/Data/CLS-LOC`, the Kaggle download unpacked as-is):
- `train/<wnid>/*.JPEG`: one folder per class, named by WordNet id (n01440764, ...); images may sit
  in sub-folders (such as `images/`). Labels index the *sorted* wnids of `train/`, the order
  torchvision's ImageFolder gives, and every split uses that index.
- `val/`, either in class folders `val/<wnid>/*.JPEG` (the common "prepared" layout), or flat,
  `val/ILSVRC2012_val_00000001.JPEG ...`, labelled by the first labels file found of:
  1. Kaggle's `LOC_val_solution.csv` (in root or `val/`): `ImageId,PredictionString` rows whose
     PredictionString starts with the wnid;
  2. the devkit's `ILSVRC2012_validation_ground_truth.txt` (in root or `ILSVRC2012_devkit_t12/data/`):
     line n is the ILSVRC2012_ID (1..1000) of `ILSVRC2012_val_{n:08d}`, mapped to wnids by the
     leaf synsets (num_children == 0) of `ILSVRC2012_devkit_t12/data/meta.mat`.
  Every flat val image needs a label, and every labelled image must exist.
- `LOC_synset_mapping.txt` (Kaggle, optional): `<wnid> <names>`; class names are the first name of
  each wnid (the wnid appended where two classes share a name, as "crane" does); without it the
  wnids themselves.

Images: the extensions imagefolder accepts (.JPEG, .jpg, .png, ... in any letter case).
Splits: "train" and "val"; the official test split has no labels, so "test" is an alias for "val".
The cached path (`load_split`) suits small subsets at a small `image_size`; without one, images are
brought to the most common size of a sample of train images (see size_reference). Full ImageNet is meant to be streamed
(`listing`).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relssl.data import imagefolder
from relssl.data.listing import Listing
from relssl.data.registry import register_dataset
from relssl.data.source import Source
from relssl.errors import DataError

SPLITS = ("train", "val", "test")
KAGGLE_BASE = Path("ILSVRC") / "Data" / "CLS-LOC"
VAL_SOLUTION = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_DATA = Path("ILSVRC2012_devkit_t12") / "data"
META = DEVKIT_DATA / "meta.mat"
PLACEMENT = ("put the images in <root>/train/<wnid>/*.JPEG and <root>/val/ (class folders, or flat with "
             f"{VAL_SOLUTION} or {GROUND_TRUTH} + {META.as_posix()}); ImageNet cannot be downloaded "
             "automatically (it needs a login at image-net.org or kaggle.com)")


def locate(root: Path) -> Path:
    """The folder holding `train/`: `root` itself, or the Kaggle download's `root/ILSVRC/Data/CLS-LOC`."""
    if not root.is_dir():
        raise DataError(f"ImageNet folder {root} does not exist; {PLACEMENT}.")
    if not (root / "train").is_dir() and (root / KAGGLE_BASE / "train").is_dir():
        return root / KAGGLE_BASE
    if not (root / "train").is_dir():
        raise DataError(f"ImageNet folder {root} has no train/ folder; {PLACEMENT}.")
    return root


def _first_existing(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def _unique(paths: Iterable[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def train_wnids(base: Path) -> list[str]:
    """The sorted class folder names of `base/train` (the class index of every split)."""
    train = base / "train"
    wnids = imagefolder.class_folders(train)
    loose = imagefolder.loose_images(train)
    if loose:
        raise DataError(f"{train} holds image files directly ({os.path.basename(loose[0])}, ...); "
                        "ImageNet's train/ needs one folder per class: move them into train/<wnid>/.")
    if not wnids:
        raise DataError(f"{train} has no class folders; {PLACEMENT}.")
    return wnids


def read_synset_mapping(path: Path) -> dict[str, str]:
    """LOC_synset_mapping.txt: `<wnid> <comma-separated names>` -> {wnid: first name}."""
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid, _, rest = line.strip().partition(" ")
        if wnid and rest.strip():
            names[wnid] = rest.split(",")[0].strip()
    return names


def class_names(wnids: list[str], mapping: Path | None) -> tuple[str, ...]:
    """The first name of each wnid from `mapping` (wnid appended to names that repeat), else the wnids."""
    if mapping is None:
        return tuple(wnids)
    words = read_synset_mapping(mapping)
    names = [words.get(w, w) for w in wnids]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return tuple(f"{n} ({w})" if counts[n] > 1 else n for n, w in zip(names, wnids))


def read_val_solution(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv -> {image id: wnid} (the first token of PredictionString)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = [field.strip() for field in next(rows, [])]
        if header[:2] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path} does not start with the header ImageId,PredictionString; "
                            "use the file of Kaggle's ImageNet Object Localization Challenge.")
        labels = {}
        for number, row in enumerate(rows, start=2):
            if not row or not any(field.strip() for field in row):
                continue
            tokens = row[1].split() if len(row) > 1 else []
            if not row[0].strip() or not tokens:
                raise DataError(f"{path} line {number} ({','.join(row)!r}) has no image id and wnid; "
                                "use the file of Kaggle's ImageNet Object Localization Challenge.")
            labels[row[0].strip()] = tokens[0]
    return labels


def _scalar(value: Any, path: Path, field: str) -> Any:
    """`value` with loadmat's 1x1 array wrappers removed (any nesting depth)."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise DataError(f"{path}: a synsets.{field} entry holds {value.size} values, not one; "
                            "use meta.mat of the official ILSVRC2012 devkit.")
        value = value.reshape(-1)[0]
    return value.item() if isinstance(value, np.generic) else value


def leaf_synsets(synsets: np.ndarray, path: Path) -> dict[int, str]:
    """The `synsets` struct array of meta.mat -> {ILSVRC2012_ID: WNID} of the leaf classes (num_children == 0)."""
    fields = synsets.dtype.names or ()
    missing = [f for f in ("ILSVRC2012_ID", "WNID", "num_children") if f not in fields]
    if missing:
        raise DataError(f"{path}: synsets has no field {missing[0]}; use meta.mat of the official ILSVRC2012 devkit.")
    table = {}
    for entry in synsets.reshape(-1):
        if int(_scalar(entry["num_children"], path, "num_children")) == 0:
            table[int(_scalar(entry["ILSVRC2012_ID"], path, "ILSVRC2012_ID"))] = str(_scalar(entry["WNID"], path, "WNID"))
    return table


def read_meta(path: Path) -> dict[int, str]:
    """The devkit's meta.mat -> {ILSVRC2012_ID: WNID} of its leaf synsets (read with scipy)."""
    from scipy.io import loadmat  # slow to import, and only this layout needs it
    from scipy.io.matlab import MatReadError

    try:
        synsets = loadmat(path)["synsets"]
    except (OSError, ValueError, KeyError, MatReadError) as err:
        raise DataError(f"cannot read the synsets of {path} ({err}); use meta.mat of the official "
                        "ILSVRC2012 devkit (ILSVRC2012_devkit_t12.tar.gz).") from None
    return leaf_synsets(np.asarray(synsets), path)


def read_ground_truth(path: Path, synsets: dict[int, str], meta: Path) -> dict[str, str]:
    """ILSVRC2012_validation_ground_truth.txt: line n -> {"ILSVRC2012_val_{n:08d}": wnid}."""
    labels = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            wnid = synsets[int(line)]
        except (ValueError, KeyError):
            raise DataError(f"{path} line {number} ({line.strip()!r}) is not an ILSVRC2012_ID of a leaf synset "
                            f"in {meta}; use the devkit's ground truth file and meta.mat together.") from None
        labels[f"ILSVRC2012_val_{number:08d}"] = wnid
    return labels


def val_labels(root: Path, base: Path) -> tuple[dict[str, str], list[Path]]:
    """{image id: wnid} for a flat val/ folder from the first labels file found, and the files read."""
    homes = _unique([root, base])
    solution = _first_existing([*(h / VAL_SOLUTION for h in homes), base / "val" / VAL_SOLUTION])
    if solution is not None:
        return read_val_solution(solution), [solution]
    truth = _first_existing([*(h / GROUND_TRUTH for h in homes), *(h / DEVKIT_DATA / GROUND_TRUTH for h in homes)])
    if truth is not None:
        meta = _first_existing(h / META for h in homes)
        if meta is None:
            raise DataError(f"{truth} needs the devkit's {META.as_posix()} under {root} to map its ids to wnids; "
                            "extract ILSVRC2012_devkit_t12.tar.gz there.")
        return read_ground_truth(truth, read_meta(meta), meta), [truth, meta]
    raise DataError(f"{base / 'val'} holds images directly but no labels file was found: put Kaggle's {VAL_SOLUTION} "
                    f"or the devkit's {GROUND_TRUTH} with {META.as_posix()} in {root}, "
                    "or sort the images into val/<wnid>/ folders.")


def _unknown_wnid(wnid: str, where: str, base: Path) -> DataError:
    return DataError(f"{where} is of class {wnid}, which has no folder in {base / 'train'}; val labels index the "
                     "train/ class folders, so add that class to train/ or remove its val images.")


def val_listing(root: Path, base: Path, index: dict[str, int], classes: tuple[str, ...]) -> tuple[Listing, list[Path]]:
    """The val split (class folders, or flat with a labels file) and the labels files it was read from."""
    folder = base / "val"
    if not folder.is_dir():
        raise DataError(f"ImageNet folder {base} has no val/ folder; {PLACEMENT}.")
    subfolders, loose = imagefolder.class_folders(folder), imagefolder.loose_images(folder)
    if subfolders and loose:
        raise DataError(f"{folder} holds both image files ({os.path.basename(loose[0])}, ...) and class folders "
                        f"({subfolders[0]}, ...); use one layout: move the images into val/<wnid>/, or remove the folders.")
    files: list[str] = []
    labels: list[int] = []
    read: list[Path] = []
    if subfolders:
        for wnid in subfolders:
            if wnid not in index:
                raise _unknown_wnid(wnid, f"the val folder {folder / wnid}", base)
            found = imagefolder.list_images(folder / wnid)
            files += found
            labels += [index[wnid]] * len(found)
    elif loose:
        wnid_of, read = val_labels(root, base)
        on_disk = set()
        for path in loose:
            image_id = os.path.splitext(os.path.basename(path))[0]
            on_disk.add(image_id)
            labelled = wnid_of.get(image_id)
            if labelled is None:
                raise DataError(f"{path} has no label in {read[0]}; remove it, or use the labels file "
                                "that comes with these images.")
            if labelled not in index:
                raise _unknown_wnid(labelled, f"{path} (per {read[0]})", base)
            files.append(path)
            labels.append(index[labelled])
        missing = sorted(set(wnid_of) - on_disk)
        if missing:
            raise DataError(f"{missing[0]} is listed in {read[0]} but {folder} has no image of that name "
                            f"({len(missing)} listed image(s) missing); restore them, or use the labels file of these images.")
    if not files:
        raise DataError(f"no images found in {folder}; {PLACEMENT}.")
    return Listing("val", files, np.asarray(labels, dtype=np.int64), classes), read


def scan(root: Path, split: str) -> tuple[Listing, list[Path], list[str]]:
    """List `split` ("test" reads "val"); also return the labels/names files read and the size reference images."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} of imagenet; choose from {', '.join(SPLITS)}")
    base = locate(root)
    wnids = train_wnids(base)
    mapping = _first_existing(_unique([root / SYNSET_MAPPING, base / SYNSET_MAPPING]))
    classes = class_names(wnids, mapping)
    index = {w: i for i, w in enumerate(wnids)}
    read = [mapping] if mapping is not None else []
    if split == "train":
        files: list[str] = []
        labels: list[int] = []
        for wnid in wnids:
            found = imagefolder.list_images(base / "train" / wnid)
            if not found:
                raise DataError(f"no images found in {base / 'train' / wnid}; add its images or remove the folder "
                                "(every train/ folder is a class).")
            files += found
            labels += [index[wnid]] * len(found)
        listing = Listing("train", files, np.asarray(labels, dtype=np.int64), classes)
        return listing, read, size_reference(base, wnids)
    listing, labels_files = val_listing(root, base, index, classes)
    return listing, read + labels_files, size_reference(base, wnids)


def size_reference(base: Path, wnids: Sequence[str]) -> list[str]:
    """The images whose most common size sets the cached image size: the first train image of up to
    SIZE_SAMPLE evenly spaced classes, the same for every split (so train and val agree)."""
    count = min(len(wnids), imagefolder.SIZE_SAMPLE)
    picked = (wnids[i * len(wnids) // count] for i in range(count))
    return [first for wnid in picked if (first := next(imagefolder.iter_images(base / "train" / wnid), None))]


def listing(root: Path, split: str) -> Listing:
    """The files and labels of an ImageNet split, for the streaming reader; a class list may name wnids."""
    found = scan(root, split)[0]
    return Listing(found.split, found.files, found.labels, found.classes, tuple(train_wnids(locate(root))))


@register_dataset("imagenet", splits=SPLITS, default_root="imagenet", eval_splits=("train", "val"), listing=listing,
                  summary="ImageNet-1k / ILSVRC2012 (train/<wnid>/; val/ in class folders or flat with labels; no download)")
def source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """ImageNet `split` under `root` for the cache (`download` is ignored: ImageNet needs a login)."""
    found, read, reference = scan(root, split)
    return imagefolder.listing_source(found, reference, desc=f"decode imagenet/{found.split}", extra_files=read)
