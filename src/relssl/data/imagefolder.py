"""Read a folder of image files, in one of three shapes, into labelled (or unlabeled) splits.

Shapes of `root`, checked in this order:
1. split folders: `root/train/`, `root/val/`, `root/test/` (any present), each holding class
   sub-folders -> splits "train", "val", "test" ("test" falls back to `val/` when there is no
   `test/`), and "all" = every split folder together. Class indices are the sorted union of the
   class folder names of all split folders, so every split uses the same labels.
2. class folders: `root/<class>/...` -> split "all" (also returned for "train"), labels by sorted name.
3. flat: image files directly in `root` -> split "all" (also "train"), labels -1, no classes. Any
   sub-folders next to those files are then plain folders, not classes: their images, found
   recursively, are unlabelled too (a photo collection with some albums in folders).

A split folder that holds images but no class folders is read as unlabeled; one that holds both is
an error (split folders promise labels). Images are found recursively inside class folders; names
starting with "." (such as the `.relssl_cache` folder) are skipped; extensions .jpg .jpeg .png .bmp
.webp .ppm match in any letter case.

Size: every image is brought to one size. With `image_size` it is image_size x image_size; without,
it is the most common (height, width) among the images of the root (all split folders, so every
split gets the same size; ties go to the size met first in sorted order, train first), which need
not be square. Only headers are read for this, of at most SIZE_SAMPLE files: for bigger folders an
evenly spaced sample of the sorted file list. Images of another size are resized on their shorter
side (bilinear, antialiased) and centre-cropped, so nothing is stretched, with a RelsslWarning that
counts them.

Links: folder and file links are followed, but every real file is listed once. A link to a folder
inside the root, or to the root or one of its parents, is not followed: the files there are listed
at their real place (or not at all, when that place is hidden or in another split). Links out of
the root are followed (a class folder kept on another disk); loops and broken links are skipped.
When one real file is reached several ways in a split, the way without links wins, else the first
in sorted order: an image of class B linked from class A's folder counts for B only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from relssl.data.arrays import ImageArrays
from relssl.data.decode import decode_images
from relssl.data.decode import image_size as read_image_size
from relssl.data.listing import Listing
from relssl.data.registry import register_dataset
from relssl.data.source import Source
from relssl.data.workers import default_workers
from relssl.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"})
SPLIT_FOLDERS = ("train", "val", "test")
SPLITS = ("train", "val", "test", "all")
#: At most this many image headers are read to find the most common size (see the module docstring).
SIZE_SAMPLE = 2000


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (any letter case)."""
    stem, dot, ext = name.rpartition(".")
    return bool(dot and stem) and not name.startswith(".") and "." + ext.lower() in IMAGE_EXTENSIONS


def _sorted_entries(folder: str | Path) -> list[os.DirEntry[str]]:
    """The visible entries of `folder` by name; a DataError naming it when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list folder {folder}: {exc.strerror or exc}. Fix its permissions, or move it "
                        "out of the data folder.") from exc


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """`entry.is_dir()`, False for a looping or broken link."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    """`entry.is_file()`, False for a looping or broken link."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    """True if the real path `path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk(folder: str | Path, root: str | Path | None) -> Iterator[tuple[str, str, bool]]:
    """(path, real path, reached without links) of the image files under `folder`, in sorted order.

    Links to folders inside `root` (default: `folder`), to `root` or its parents, or to `folder`'s
    parents are not followed; other folder links are, each real folder once.
    """
    start = os.fspath(folder)
    real_start = os.path.realpath(start)
    real_root = os.path.realpath(root) if root is not None else real_start
    seen: set[tuple[int, int]] = set()

    def walk(directory: str, real_dir: str, direct: bool) -> Iterator[tuple[str, str, bool]]:
        info = os.stat(directory)
        if (info.st_dev, info.st_ino) in seen:
            return
        seen.add((info.st_dev, info.st_ino))
        real_prefix = real_dir.rstrip(os.sep) + os.sep
        for entry in _sorted_entries(directory):
            link = entry.is_symlink()
            if _is_dir(entry):
                if not link:
                    yield from walk(entry.path, real_prefix + entry.name, direct)
                    continue
                target = os.path.realpath(entry.path)
                if not (_inside(target, real_root) or _inside(real_root, target) or _inside(real_start, target)):
                    yield from walk(entry.path, target, False)
            elif is_image_name(entry.name) and _is_file(entry):
                if link:
                    yield entry.path, os.path.realpath(entry.path), False
                else:
                    yield entry.path, real_prefix + entry.name, direct

    yield from walk(start, real_start, True)


def _keep_once(found: Sequence[tuple[str, str, bool]]) -> list[int]:
    """Indices into `found` that list each real file once: its first way without links, else its first way."""
    best: dict[str, int] = {}
    for i, (_, real, direct) in enumerate(found):
        j = best.get(real)
        if j is None or (direct and not found[j][2]):
            best[real] = i
    return sorted(best.values())


def iter_images(folder: str | Path, root: str | Path | None = None) -> Iterator[str]:
    """Paths (as str: cheaper than Path for 10^5 files) of the image files under `folder`, recursively,
    in sorted order, each real file once (the first way it is reached); links are followed as the
    module docstring says, with `root` (default `folder`) as the root."""
    listed: set[str] = set()
    for path, real, _ in _walk(folder, root):
        if real not in listed:
            listed.add(real)
            yield path


def list_images(folder: str | Path, root: str | Path | None = None) -> list[str]:
    """All image files under `folder`, each real file once, preferring the way without links (see iter_images)."""
    found = list(_walk(folder, root))
    return [found[i][0] for i in _keep_once(found)]


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the visible sub-folders of `folder`."""
    return [e.name for e in _sorted_entries(folder) if _is_dir(e)]


def loose_images(folder: Path) -> list[str]:
    """Image files directly inside `folder` (not in sub-folders)."""
    return [e.path for e in _sorted_entries(folder) if is_image_name(e.name) and _is_file(e)]


def labelled_listing(split: str, folders: Sequence[Path], classes: Sequence[str], *,
                     root: Path | None = None) -> Listing:
    """Images of `folders`, each holding class sub-folders named from `classes` (others are an error).

    Every real file is listed once across all classes (see the module docstring); `root` bounds
    the links that are followed (default: each folder of `folders`).
    """
    index = {name: i for i, name in enumerate(classes)}
    found: list[tuple[str, str, bool]] = []
    labels: list[int] = []
    for folder in folders:
        for name in class_folders(folder):
            if name not in index:
                shown = ", ".join(list(classes)[:20]) + (", ..." if len(classes) > 20 else "")
                raise DataError(
                    f"unexpected class folder {folder / name}; the classes are: {shown}. Remove or rename it."
                )
            here = list(_walk(folder / name, root if root is not None else folder))
            found += here
            labels += [index[name]] * len(here)
    keep = _keep_once(found)
    return Listing(split, [found[i][0] for i in keep], np.asarray([labels[i] for i in keep], dtype=np.int64),
                   tuple(classes))


def _folder_listing(split: str, folder: Path, classes: Sequence[str], root: Path) -> Listing:
    """One split folder: class sub-folders -> labelled; loose images only -> unlabeled."""
    subfolders, loose = class_folders(folder), loose_images(folder)
    if subfolders and loose:
        raise DataError(
            f"{folder} holds both image files ({os.path.basename(loose[0])}, ...) and class folders "
            f"({subfolders[0]}, ...). "
            "Move the loose images into a class folder, or remove them."
        )
    if subfolders:
        return labelled_listing(split, [folder], classes, root=root)
    return Listing(split, loose, np.full(len(loose), -1, dtype=np.int64), ())


def size_sample(files: Sequence[str]) -> list[str]:
    """At most SIZE_SAMPLE of `files`: all of them, or that many evenly spaced over the list."""
    if len(files) <= SIZE_SAMPLE:
        return list(files)
    return [files[i * len(files) // SIZE_SAMPLE] for i in range(SIZE_SAMPLE)]


def majority_size(files: Sequence[str | Path]) -> tuple[int, int]:
    """The most common (height, width) of `files` (headers only); a tie goes to the size met first."""
    if not files:
        raise DataError("no images to take the image size from; set data.image_size")
    with ThreadPoolExecutor(default_workers()) as pool:
        sizes = list(pool.map(read_image_size, files))
    counts: dict[tuple[int, int], int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return max(counts, key=counts.__getitem__)  # max keeps the first of equal counts: insertion order


def scan(root: Path, split: str, *, reference: bool = True) -> tuple[Listing, list[str] | None]:
    """List the images of `split` under `root` (see the module docstring).

    Also return the files whose most common size sets the image size: a sample of every split
    folder's images, so that all splits agree (None: the listing's own images, or `reference` False).
    """
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist or is not a folder. Pass the folder that holds the images."
        )
    present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if present:
        classes = sorted({c for name in present for c in class_folders(root / name)})
        sample = size_sample([i for name in present for i in iter_images(root / name, root)]) if reference else None
        if split == "all":
            parts = [_folder_listing(name, root / name, classes, root) for name in present]
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
            listing = _folder_listing(folder, root / folder, classes, root)
        return require_images(listing, root / listing.split if listing.split != "all" else root), sample
    if split not in ("all", "train"):
        raise DataError(
            f"{root} has no train/, val/ or test/ folder, so its only split is 'all' (alias 'train'); "
            f"to get a {split} split, arrange it as {root}/train/<class>/ and {root}/{split}/<class>/."
        )
    subfolders = class_folders(root)
    if subfolders and loose_images(root):  # shape 3 with sub-folders: no class structure
        files = list_images(root)
        listing = Listing("all", files, np.full(len(files), -1, dtype=np.int64), ())
    else:
        listing = _folder_listing("all", root, subfolders, root)
    return require_images(listing, root), None


def require_images(listing: Listing, folder: Path) -> Listing:
    """`listing` itself, or a DataError naming `folder` when it has no images."""
    if not listing.files:
        raise DataError(
            f"no images found in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, any letter "
            "case, in it and its sub-folders). Add images or point root at the folder that holds them."
        )
    return listing


def listing_source(listing: Listing, reference: str | Path | Sequence[str] | None, *, desc: str,
                   extra_files: Sequence[str | Path] = ()) -> Source:
    """A Source that decodes `listing` to image_size x image_size, or else to a size taken from `reference`.

    `reference` is one image (its size), a list of images (their most common size, of at most
    SIZE_SAMPLE of them), or None (the most common size of the listing's own images).
    """
    single: str | Path | None = None
    sample: list[str] = []
    if isinstance(reference, (str, Path)):
        single = reference
    elif reference is not None:
        sample = size_sample([os.fspath(path) for path in reference])

    def build(image_size: int | None, progress: bool) -> ImageArrays:
        note = None
        if image_size is not None:
            size = (image_size, image_size)
        elif single is not None:
            size = read_image_size(single)
            note = f"the size of {single}"
        else:
            chosen = sample or size_sample(listing.files)
            size = majority_size(chosen)
            note = f"the most common size among {len(chosen)} of them"
        images = decode_images(listing.files, size, progress=progress, desc=desc, note_other_sizes=note)
        return ImageArrays(images, listing.labels, listing.classes)

    refs: tuple[str | Path, ...] = (single,) if single is not None else tuple(sample)
    files = tuple(listing.files) + tuple(extra_files) + refs
    return Source(listing.split, files, build, {"classes": list(listing.classes), "size_rule": "majority"})


def folder_listing(root: Path, split: str) -> Listing:
    """The files and labels of one split of an image folder, for the streaming reader."""
    return scan(root, split, reference=False)[0]


@register_dataset("imagefolder", splits=SPLITS, listing=folder_listing,
                  summary="a folder of images: class sub-folders with train/ + test/|val/ splits, or flat and unlabelled")
def source(root: Path, split: str, *, download: bool = True, progress: bool = True) -> Source:
    """The Source of one split of an image folder (`download` is ignored: there is nothing to fetch)."""
    listing, reference = scan(root, split)
    return listing_source(listing, reference, desc=f"decode {root.name}/{listing.split}")
