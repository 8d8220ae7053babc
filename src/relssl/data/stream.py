"""The streaming reader: images decoded batch by batch in DataLoader workers, never cached whole.

For full-resolution photos and ImageNet-scale folders. Training: each worker decodes an image
once per step and takes its K random-resized crops from the whole image (torchvision's
RandomResizedCrop distribution, PIL crop then bilinear resize, uint8, `size` x `size`); the main
process receives one uint8 (K*m, size, size, 3) view-major batch and moves it to the device,
where `ViewAugment` does the rest (flip, colour jitter, grayscale, normalisation). Evaluation:
each image resized on its shorter side to `resize` and centre-cropped to `size` (ImageNet's
256 -> 224).

Reproducible and resumable: the batches of epoch e are the same permutation as the in-memory
path's (`epoch_batches`), and the crops of image i in epoch e come from a generator seeded with
(seed, e, i), so they do not depend on which worker decodes the image, on the number of workers,
or on where a run resumed. An unreadable image is replaced by the next readable one and counted
(`StreamLoader.skipped`), unless `strict`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from relssl.augment.params import CROP_TRIES, sample_crop_boxes
from relssl.data.batch_indices import LabelledBatches, batch_indices, epoch_batches, labelled_floor
from relssl.data.config import STREAM_ABOVE_GIB, DataConfig
from relssl.data.decode import to_rgb
from relssl.data.listing import Listing
from relssl.data.load import load_listing
from relssl.data.registry import dataset_spec
from relssl.data.workers import default_workers
from relssl.errors import DataError, RelsslWarning
from relssl.progress import track

__all__ = ["CropSettings", "StreamLoader", "make_loader", "crop_uniforms", "decode_rgb", "epoch_batches", "eval_image",
           "random_resized_crops", "stream_features", "streamed_listing"]

MAX_REPLACEMENTS = 16  # unreadable images in a row before the stream gives up


def decode_rgb(path: str) -> Image.Image:
    """An image file as a loaded 8-bit RGB PIL image (converted as the decode cache does: see decode.to_rgb)."""
    with Image.open(path) as image:
        image.load()
        return to_rgb(image, path)


def crop_uniforms(seed: int, epoch: int, index: int, views: int) -> np.ndarray:
    """The uniforms (views, 2 * CROP_TRIES + 2) behind image `index`'s crops in `epoch` (see sample_crop_boxes)."""
    return np.random.default_rng([seed, epoch, index]).random((views, 2 * CROP_TRIES + 2))


def random_resized_crops(image: Image.Image, uniforms: np.ndarray, size: int, scale: tuple[float, float],
                         ratio: tuple[float, float]) -> np.ndarray:
    """uint8 (views, size, size, 3): each view a RandomResizedCrop of the whole `image`, as torchvision's on PIL."""
    boxes = sample_crop_boxes(torch.from_numpy(uniforms), image.height, image.width, scale, ratio)
    out = np.empty((len(boxes), size, size, 3), dtype=np.uint8)
    for v, (top, left, h, w) in enumerate(boxes.round().long().tolist()):
        crop = image.crop((left, top, left + w, top + h))
        out[v] = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
    return out


def eval_image(image: Image.Image, size: int, resize: int) -> np.ndarray:
    """uint8 (size, size, 3): shorter side resized to `resize` (bilinear), then the centre `size` x `size`."""
    scale = resize / min(image.width, image.height)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.Resampling.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


@dataclass(frozen=True)
class CropSettings:
    """How the workers turn one image into views: K random-resized crops, or one evaluation crop."""

    size: int
    views: int = 1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    resize: int | None = None  # evaluation: shorter side before the centre crop (None: random crops)


@dataclass
class _Item:
    images: np.ndarray  # (views, size, size, 3) uint8
    label: int
    index: int  # the image actually used (a replacement when the requested one was unreadable)
    skipped: list[str] = field(default_factory=list)
    error: str = ""  # set when the image could not be used: raised (training, strict) or marked (evaluation)


class _Images(Dataset):
    """Map-style dataset of (epoch, index) keys -> the views of one image (runs in the workers)."""

    def __init__(self, listing: Listing, crops: CropSettings, seed: int, strict: bool) -> None:
        # A NumPy array rather than a list of 10^6 str objects: forked workers touching the objects'
        # reference counts would copy the list's pages into every worker.
        self.files, self.labels = np.array(listing.files), listing.labels
        self.crops, self.seed, self.strict = crops, seed, strict

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> _Item:
        # Errors travel back inside the item: an exception raised in a worker would reach the main
        # process wrapped in its traceback, not as the one-line message a user error deserves.
        epoch, index = key
        c, skipped = self.crops, []
        for attempt in range(MAX_REPLACEMENTS):
            i = (index + attempt) % len(self.files)
            path = str(self.files[i])
            try:
                image = decode_rgb(path)
            except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
                message = f"cannot read image {path}: {err}"
                if self.strict or c.resize is not None:  # stop, or (evaluation) mark this row as unreadable
                    blank = np.zeros((c.views, c.size, c.size, 3), dtype=np.uint8)
                    return _Item(blank, int(self.labels[i]), i, [path], message)
                skipped.append(path)
                continue
            if c.resize is not None:
                views = eval_image(image, c.size, c.resize)[None]
            else:
                views = random_resized_crops(image, crop_uniforms(self.seed, epoch, i, c.views), c.size, c.scale,
                                             c.ratio)
            return _Item(views, int(self.labels[i]), i, skipped)
        blank = np.zeros((c.views, c.size, c.size, 3), dtype=np.uint8)
        return _Item(blank, -1, index, skipped, f"{MAX_REPLACEMENTS} unreadable images in a row from {skipped[0]}; "
                                                  "is the folder damaged?")


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]


def _collate(items: Sequence[_Item]) -> Batch:
    """Items -> uint8 views (K*m, S, S, 3) view-major, labels (m,), indices (m,), skipped files, errors."""
    stacked = np.stack([item.images for item in items], axis=1)  # (K, m, S, S, 3)
    views = torch.from_numpy(stacked.reshape(-1, *stacked.shape[2:]))
    labels = torch.tensor([item.label for item in items], dtype=torch.long)
    indices = torch.tensor([item.index for item in items], dtype=torch.long)
    return (views, labels, indices, [path for item in items for path in item.skipped],
            [item.error for item in items])


def _init_worker(worker_id: int) -> None:
    """One thread per worker: the workers run side by side, PIL does the work."""
    torch.set_num_threads(1)
    info = get_worker_info()
    if info is not None:  # NumPy's global RNG is not used here, but keep workers apart for user code
        np.random.seed(info.seed % 2**32)


def make_loader(dataset: Dataset, keys: list[list[tuple[int, int]]], workers: int, device: torch.device,
                prefetch: int, collate: Callable[[Any], Any] | None = None) -> DataLoader:
    """A DataLoader over the (epoch, index) keys of each step: one batch per step, decoded in `workers` processes."""
    return DataLoader(
        dataset, batch_sampler=keys, num_workers=workers, collate_fn=collate or _collate,
        pin_memory=device.type == "cuda", worker_init_fn=_init_worker if workers else None,
        prefetch_factor=prefetch if workers else None, persistent_workers=False,
        multiprocessing_context="fork" if workers and os.name == "posix" else None,
    )


class StreamLoader:
    """Yields (uint8 views (K*m, S, S, 3), labels (m,), dataset indices (m,)) on `device`, step by step.

    The drop-in for BatchStream on the streaming path (`cropped` tells the trainer that the crops
    are already taken). `batch_size` is the global batch; rank `rank` of `world_size` gets its block.
    """

    cropped = True

    def __init__(self, listing: Listing, crops: CropSettings, batch_size: int, *, seed: int = 0,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, workers: int | None = None,
                 prefetch: int = 4, strict: bool = False, labels: np.ndarray | None = None,
                 labelled_batches: LabelledBatches | None = None) -> None:
        if batch_size % world_size or batch_size // world_size < 2:
            raise DataError(f"train.batch_size={batch_size} must split into at least 2 images on each of the "
                            f"{world_size} processes")
        if len(listing) < batch_size:
            raise DataError(f"train.batch_size={batch_size} exceeds the {len(listing)} images of "
                            f"{listing.split}; lower --batch-size")
        self.listing, self.crops = listing, crops
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.device = torch.device(device)
        self.workers = default_workers() if workers is None else workers
        self.prefetch = prefetch
        if labels is not None:  # the labels training sees (the semi-supervised option hides some)
            listing = Listing(listing.split, listing.files, np.asarray(labels, dtype=np.int64), listing.classes)
        self.dataset = _Images(listing, crops, seed, strict)
        self.labelled_floor = labelled_floor(torch.from_numpy(listing.labels), batch_size, labelled_batches)
        self.labelled_rest = labelled_batches.rest if labelled_batches else "all"
        self.skipped = 0  # unreadable images replaced so far (this process)
        self._warned: set[str] = set()

    @property
    def num_images(self) -> int:
        return len(self.listing)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch."""
        return self.num_images // self.batch_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's (steps, m) image indices for `epoch`, as the in-memory BatchStream draws them."""
        return batch_indices(torch.from_numpy(self.dataset.labels), self.batch_size, self.labelled_floor, self.seed,
                             epoch, self.rank, self.world_size, self.labelled_rest)

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of `epoch` from step `start_step` on (a resumed run starts mid-epoch)."""
        keys = [[(epoch, int(i)) for i in step] for step in self.epoch_indices(epoch)[start_step:]]
        for views, labels, indices, skipped, errors in make_loader(self.dataset, keys, self.workers, self.device,
                                                              self.prefetch):
            failed = next((e for e in errors if e), "")
            if failed:
                hint = "Remove or replace it, or drop data.strict to skip unreadable images" if self.dataset.strict \
                    else "Remove or replace the damaged files"
                raise DataError(f"{failed}. {hint}")
            self._note_skipped(skipped)
            non_blocking = self.device.type == "cuda"
            yield (views.to(self.device, non_blocking=non_blocking), labels.to(self.device, non_blocking=non_blocking),
                   indices.to(self.device, non_blocking=non_blocking))

    def _note_skipped(self, paths: list[str]) -> None:
        self.skipped += len(paths)
        for path in paths:
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipped unreadable image {path} (replaced by the next one); "
                              "data.strict=true stops instead", RelsslWarning, stacklevel=1)


@torch.no_grad()
def stream_features(backbone: torch.nn.Module, listing: Listing, *, size: int, resize: int, normalize: Any,
                    batch_size: int = 256, device: torch.device | str = "cpu", workers: int | None = None,
                    progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Float32 (N, feature_dim) CPU features of every image of `listing` (evaluation crop), in order.

    `normalize` maps a uint8 batch on the device to the backbone's input (as for extract_features).
    The row of an unreadable image is NaN (with a warning): the protocols leave such rows out and
    count them, instead of scoring a made-up image.
    """
    device = torch.device(device)
    dataset = _Images(listing, CropSettings(size=size, resize=resize), seed=0, strict=False)
    keys = [[(0, i) for i in range(start, min(start + batch_size, len(listing)))]
            for start in range(0, len(listing), batch_size)]
    modes = {module: module.training for module in backbone.modules()}
    backbone.eval()
    out: torch.Tensor | None = None
    try:
        loader = make_loader(dataset, keys, default_workers() if workers is None else workers, device, 2)
        row = 0
        for views, _, _, skipped, errors in track(loader, total=len(keys), desc=desc, unit="batch", show=progress):
            features = backbone(normalize(views.to(device))).flatten(1).float().cpu()
            bad = torch.tensor([bool(e) for e in errors])
            features[bad] = float("nan")
            for path in skipped:
                warnings.warn(f"unreadable image {path} is left out of the evaluation", RelsslWarning, stacklevel=1)
            if out is None:
                out = torch.empty(len(listing), features.shape[1])
            out[row : row + len(features)] = features
            row += len(features)
    finally:
        for module, training in modes.items():
            module.training = training
    assert out is not None
    return out



def streamed_listing(data: DataConfig, dataset: str, split: str, root: str | None) -> Listing | None:
    """The listing to stream `split` from, or None for the cached path (`data.stream`, or its automatic choice).

    Unset `data.stream` streams a file dataset whose decode cache (images x their size, uint8 RGB)
    would take more than STREAM_ABOVE_GIB; in-memory and binary-format datasets never stream.
    """
    if data.stream is False or (data.stream is None and dataset_spec(dataset).listing is None):
        return None
    listing = load_listing(dataset, split, root, class_list=data.class_list)
    if data.stream is None:
        side = data.image_size
        height, width = (side, side) if side else decode_rgb(listing.files[0]).size[::-1]
        if len(listing) * height * width * 3 <= STREAM_ABOVE_GIB * 1024**3:
            return None
    return listing


def stream_sample(listing: Listing, size: int, resize: int, *, count: int = 512, seed: int = 0,
                  workers: int | None = None) -> np.ndarray:
    """uint8 (n, size, size, 3) evaluation crops of a seeded sample of up to `count` images (for channel stats)."""
    rows = np.sort(np.random.default_rng(seed).choice(len(listing), min(count, len(listing)), replace=False))
    dataset = _Images(listing, CropSettings(size=size, resize=resize), seed=0, strict=False)
    keys = [[(0, int(i)) for i in rows[start : start + 64]] for start in range(0, len(rows), 64)]
    loader = make_loader(dataset, keys, default_workers() if workers is None else workers, torch.device("cpu"), 2)
    return np.concatenate([views.numpy()[[not e for e in errors]] for views, _, _, _, errors in loader])
