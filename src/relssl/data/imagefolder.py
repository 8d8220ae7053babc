"""Read a folder of image files, in one of three shapes, into labelled (or unlabeled) splits.

Shapes of `root`, checked in this order:
1. split folders: `root/train/`, `root/val/`, `root/test/` (any present), each holding class
   sub-folders -> splits "train", "val", "test" ("test" falls back to `val/` when there is no
   `test/`), and "all" = every split folder together. Class indices are the sorted union of the
   class folder names of all split folders, so every split uses the same labels.
2. class folders: `root/<class>/...` -> split "all" (also returned for "train"), labels by sorted name.
3. flat: image files directly in `root` -> split "all" (also "train"), labels -1, no classes.

A split folder that holds images but no class folders is read as unlabeled. Images are found
recursively inside class folders; names starting with "." (such as the `.relssl_cache` folder)
are skipped; extensions .jpg .jpeg .png .bmp .webp .ppm match in any letter case.

Size: every image is brought to one size. With `image_size` it is image_size x image_size; without,
it is the (height, width) of the first image of the root (sorted order; train first), which need
not be square. Images of another size are resized on their shorter side (bilinear, antialiased)
and centre-cropped, so nothing is stretched.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from relssl.data.arrays import ImageArrays
from relssl.data.decode import decode_images
from relssl.data.decode import image_size as read_image_size
from relssl.data.listing import Listing
from relssl.data.registry import register_dataset
from relssl.data.source import Source
from relssl.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"})
SPLIT_FOLDERS = ("train", "val", "test")
SPLITS = ("train", "val", "test", "all")


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (any letter case)."""
    stem, dot, ext = name.rpartition(".")
    return bool(dot and stem) and not name.startswith(".") and "." + ext.lower() in IMAGE_EXTENSIONS


def _sorted_entries(folder: str | Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def iter_images(folder: str | Path) -> Iterator[str]:
    """Paths (as str: cheaper than Path for 10^5 files) of the image files under `folder`, recursively,
    in sorted order; folder links are followed, loops are not."""
    seen: set[tuple[int, int]] = set()

    def walk(directory: str) -> Iterator[str]:
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        for entry in _sorted_entries(directory):
            if entry.is_dir():
                yield from walk(entry.path)
            elif entry.is_file() and is_image_name(entry.name):
                yield entry.path

    yield from walk(os.fspath(folder))


def list_images(folder: str | Path) -> list[str]:
    """All image files under `folder` (see iter_images)."""
    return list(iter_images(folder))


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of `folder`."""
    return [e.name for e in _sorted_entries(folder) if e.is_dir()]


def loose_images(folder: Path) -> list[str]:
    """Image files directly inside `folder` (not in sub-folders)."""
    return [e.path for e in _sorted_entries(folder) if e.is_file() and is_image_name(e.name)]


def labelled_listing(split: str, folders: Sequence[Path], classes: Sequence[str]) -> Listing:
    """Images of `folders`, each holding class sub-folders named from `classes` (others are an error)."""
    index = {name: i for i, name in enumerate(classes)}
    files: list[str] = []
    labels: list[int] = []
    for folder in folders:
        for name in class_folders(folder):
            if name not in index:
                shown = ", ".join(list(classes)[:20]) + (", ..." if len(classes) > 20 else "")
                raise DataError(
                    f"unexpected class folder {folder / name}; the classes are: {shown}. Remove or rename it."
                )
            found = list_images(folder / name)
            files += found
            labels += [index[name]] * len(found)
    return Listing(split, files, np.asarray(labels, dtype=np.int64), tuple(classes))


def _folder_listing(split: str, folder: Path, classes: Sequence[str]) -> Listing:
    """One split folder: class sub-folders -> labelled; loose images only -> unlabeled."""
    subfolders, loose = class_folders(folder), loose_images(folder)
    if subfolders and loose:
        raise DataError(
            f"{folder} holds both image files ({os.path.basename(loose[0])}, ...) and class folders "
            f"({subfolders[0]}, ...). "
            "Move the loose images into a class folder, or remove them."
        )
    if subfolders:
        return labelled_listing(split, [folder], classes)
    return Listing(split, loose, np.full(len(loose), -1, dtype=np.int64), ())


def _first_image(folder: Path) -> str | None:
    return next(iter_images(folder), None)


def scan(root: Path, split: str) -> tuple[Listing, str | None]:
    """List the images of `split` under `root` (see the module docstring); also return the size reference image."""
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist or is not a folder. Pass the folder that holds the images."
        )
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if present:
        classes = sorted({c for name in present for c in class_folders(root / name)})
        reference = next((img for name in present if (img := _first_image(root / name)) is not None), None)
        if split == "all":
            parts = [_folder_listing(name, root / name, classes) for name in present]
            if any(p.classes for p in parts) and not all(p.classes for p in parts):
                raise DataError(f"some split folders of {root} have class folders and some do not; make them alike.")
            listing = Listing(
                "all", [f for p in parts for f in p.files],
                np.concatenate([p.labels for p in parts]), parts[0].classes,
            )
        else:
            folder = split if split in present else "val" if split == "test" and "val" in present else None
            if folder is None:
                raise DataError(
                    f"{root} has no {split}/ folder (it has {', '.join(f'{p}/' for p in present)}); "
                    f"choose one of the splits {', '.join(present + ['all'])}."
                )
            listing = _folder_listing(folder, root / folder, classes)
        return require_images(listing, root / listing.split if listing.split != "all" else root), reference
    if split not in ("all", "train"):
        raise DataError(
            f"{root} has no train/, val/ or test/ folder, so its only split is 'all' (alias 'train'); "
            f"to get a {split} split, arrange it as {root}/train/<class>/ and {root}/{split}/<class>/."
        )
    listing = _folder_listing("all", root, sorted(class_folders(root)))
    return require_images(listing, root), (listing.files[0] if listing.files else None)


def require_images(listing: Listing, folder: Path) -> Listing:
    """`listing` itself, or a DataError naming `folder` when it has no images."""
    if not listing.files:
        raise DataError(
            f"no images found in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, any letter "
            "case, in it and its sub-folders). Add images or point root at the folder that holds them."
        )
    return listing


def listing_source(listing: Listing, reference: str | Path | None, *, desc: str,
                   extra_files: Sequence[str | Path] = ()) -> Source:
    """A Source that decodes `listing` to the size of `reference` (or image_size x image_size)."""

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        if image_size is not None:
            size = (image_size, image_size)
        else:
            size = read_image_size(reference if reference is not None else listing.files[0])
        images = decode_images(listing.files, size, progress=progress, desc=desc)
        return ImageArrays(images, listing.labels, listing.classes)

    files = tuple(listing.files) + tuple(extra_files) + ((reference,) if reference is not None else ())
    return Source(listing.split, files, build, {"classes": list(listing.classes)})


def folder_listing(root: Path, split: str) -> Listing:
    """The files and labels of one split of an image folder, for the streaming reader."""
    return scan(root, split)[0]


@register_dataset("imagefolder", splits=SPLITS, listing=folder_listing,
                  summary="a folder of images: class sub-folders with train/ + test/|val/ splits, or flat and unlabelled")
def source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """The Source of one split of an image folder (`download` is ignored: there is nothing to fetch)."""
    listing, reference = scan(root, split)
    return listing_source(listing, reference, desc=f"decode {root.name}/{listing.split}")
