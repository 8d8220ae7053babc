"""`data.decode=gpu`: the streaming reader with JPEGs decoded in batches on the GPU and cropped there.

DataLoader workers only read the files' bytes (and decode the rare non-JPEG file on the CPU);
the main process hands each step's JPEGs to `torchvision.io.decode_jpeg(..., device="cuda")` in
one call and takes the K random-resized crops on the device (bilinear, antialiased), from the
same per-image seeded boxes as the CPU path. The crops differ from the CPU path's only by the
resampling code (torch's interpolate instead of PIL's resize). A JPEG the GPU decoder rejects
(CMYK, progressive variants some builds refuse, a damaged file) is decoded on the CPU instead,
and a file nobody can read is replaced by the next one and counted, as on the CPU path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from relssl.augment.params import sample_crop_boxes
from relssl.data.listing import Listing
from relssl.data.stream import CropSettings, StreamLoader, crop_uniforms, decode_rgb, make_loader
from relssl.errors import ConfigError, DataError

__all__ = ["GpuDecodeLoader"]

_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclass
class _Raw:
    data: torch.Tensor  # the file's bytes (uint8), or a decoded (3, H, W) uint8 image for non-JPEG files
    decoded: bool
    label: int
    index: int
    uniforms: np.ndarray


class _RawFiles(Dataset):
    """(epoch, index) -> the bytes of one image file (workers do no decoding of JPEGs)."""

    def __init__(self, listing: Listing, crops: CropSettings, seed: int) -> None:
        self.files, self.labels, self.crops, self.seed = np.array(listing.files), listing.labels, crops, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> _Raw:
        epoch, index = key
        path = str(self.files[index])
        uniforms = crop_uniforms(self.seed, epoch, index, self.crops.views)
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw.startswith(_JPEG_MAGIC):
            return _Raw(torch.frombuffer(bytearray(raw), dtype=torch.uint8), False, int(self.labels[index]), index,
                        uniforms)
        try:
            image = torch.from_numpy(np.asarray(decode_rgb(path)).copy()).permute(2, 0, 1)
        except Exception:  # noqa: BLE001 - an unreadable file: the main process replaces it
            image = torch.empty(0, dtype=torch.uint8)
        return _Raw(image, True, int(self.labels[index]), index, uniforms)


def _collate_raw(items: Sequence[_Raw]) -> list[_Raw]:
    return list(items)


class GpuDecodeLoader(StreamLoader):
    """StreamLoader whose JPEGs are decoded and cropped on `device` (a CUDA device; `allow_cpu` for tests)."""

    def __init__(self, listing: Listing, crops: CropSettings, batch_size: int, *, allow_cpu: bool = False,
                 **kwargs: object) -> None:
        super().__init__(listing, crops, batch_size, **kwargs)  # type: ignore[arg-type]
        if self.device.type != "cuda" and not allow_cpu:
            raise ConfigError("data.decode=gpu decodes JPEGs with torchvision on a CUDA device, but this run is on "
                              f"{self.device}; use data.decode=cpu")
        self.raw = _RawFiles(listing, crops, self.seed)
        self.raw.labels = self.dataset.labels  # the labels training sees (the semi-supervised option hides some)

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        keys = [[(epoch, int(i)) for i in step] for step in self.epoch_indices(epoch)[start_step:]]
        for items in make_loader(self.raw, keys, self.workers, torch.device("cpu"), self.prefetch, _collate_raw):
            images = self._decode(items, epoch)
            views = torch.stack([self._crops(image, item.uniforms) for image, item in zip(images, items)], dim=1)
            labels = torch.tensor([item.label for item in items], device=self.device)
            indices = torch.tensor([item.index for item in items], device=self.device)
            yield views.reshape(-1, *views.shape[2:]), labels, indices  # (K*m, S, S, 3) view-major

    def _decode(self, items: list[_Raw], epoch: int) -> list[torch.Tensor]:
        """(3, H, W) uint8 images on the device: JPEGs in one batched call, the rest already decoded."""
        jpegs = [i for i, item in enumerate(items) if not item.decoded]
        out: list[torch.Tensor | None] = [None] * len(items)
        try:
            decoded = decode_jpeg([items[i].data for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
            for i, image in zip(jpegs, decoded):
                out[i] = image
        except RuntimeError:  # one file the GPU decoder refuses: one at a time, falling back to the CPU
            for i in jpegs:
                out[i] = self._decode_one(items[i])
        for i, item in enumerate(items):
            if item.decoded:
                out[i] = item.data.to(self.device) if item.data.numel() else None
            if out[i] is None:
                out[i], items[i] = self._replacement(item, epoch)
        return [image for image in out if image is not None]

    def _decode_one(self, item: _Raw) -> torch.Tensor | None:
        try:
            return decode_jpeg(item.data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            try:
                array = np.asarray(decode_rgb(self.listing.files[item.index])).copy()
                return torch.from_numpy(array).permute(2, 0, 1).to(self.device)
            except Exception:  # noqa: BLE001 - unreadable: replaced by the caller
                return None

    def _replacement(self, item: _Raw, epoch: int) -> tuple[torch.Tensor, _Raw]:
        """The next readable image after an unreadable one (counted and warned about, or an error when strict)."""
        path = self.listing.files[item.index]
        if self.dataset.strict:
            raise DataError(f"cannot read image {path}. Remove or replace it, or drop data.strict to skip "
                            "unreadable images")
        self._note_skipped([path])
        for step in range(1, 17):
            index = (item.index + step) % self.num_images
            candidate = self.raw[(epoch, index)]
            image = self._decode_one(candidate) if not candidate.decoded else (
                candidate.data.to(self.device) if candidate.data.numel() else None)
            if image is not None:
                return image, candidate
            self._note_skipped([self.listing.files[index]])
        raise DataError(f"16 unreadable images in a row from {path}; is the folder damaged?")

    def _crops(self, image: torch.Tensor, uniforms: np.ndarray) -> torch.Tensor:
        """uint8 (K, S, S, 3): the random-resized crops of one decoded image, on the device."""
        size, c = self.crops.size, self.crops
        boxes = sample_crop_boxes(torch.from_numpy(uniforms), image.shape[1], image.shape[2], c.scale, c.ratio)
        crops = []
        for top, left, h, w in boxes.round().long().tolist():
            region = image[:, top : top + h, left : left + w].unsqueeze(0).float()
            crops.append(F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True))
        return torch.cat(crops).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
