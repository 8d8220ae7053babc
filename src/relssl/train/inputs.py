"""The training split of a run, decoded into arrays or listed for streaming, and its normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from relssl.augment import AugmentConfig
from relssl.data import ImageArrays, channel_stats, load_split
from relssl.data.batch_indices import LabelledBatches
from relssl.data.gpu_decode import GpuDecodeLoader
from relssl.data.listing import Listing
from relssl.data.stream import CropSettings, StreamLoader, stream_sample, streamed_listing
from relssl.distributed import barrier, is_main, rank, world_size
from relssl.errors import ConfigError
from relssl.train.config import RunConfig

__all__ = ["TrainingInputs", "open_training_inputs"]


@dataclass(frozen=True)
class TrainingInputs:
    """The pretraining split: decoded `arrays`, or a `listing` streamed with crops of `crop` pixels."""

    split: str
    labels: np.ndarray
    num_classes: int
    arrays: ImageArrays | None = None
    listing: Listing | None = None
    crop: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        """E.g. `1347 images 16x16`, or `1281167 images, streamed (224x224 crops of the full images)`."""
        if self.arrays is not None:
            return f"{len(self)} images {self.arrays.images.shape[1]}x{self.arrays.images.shape[2]}"
        return f"{len(self)} images, streamed ({self.crop}x{self.crop} crops of the full-size files)"

    def augment_config(self, config: RunConfig) -> AugmentConfig:
        """The run's augmentation, with mean/std measured on the split (a seeded sample) unless given."""
        aug = config.augment
        if aug.mean is not None and aug.std is not None:
            return aug
        if self.arrays is not None:
            mean, std = channel_stats(self.arrays.images, seed=config.seed)
        else:
            assert self.listing is not None
            sample = stream_sample(self.listing, self.crop, eval_resize(config, self.crop), seed=config.seed,
                                   workers=config.data.workers)
            mean, std = channel_stats(sample, seed=config.seed)
        return aug.model_copy(update={"mean": aug.mean or mean, "std": aug.std or std})

    def loader(self, config: RunConfig, labels: np.ndarray, views: int, device: torch.device,
               labelled_batches: LabelledBatches | None = None) -> StreamLoader:
        """The streaming reader over this split for a method of `views` views (its labels as training sees them).

        `labelled_batches` composes batches while labels are few (data/batch_indices.py).
        """
        assert self.listing is not None
        aug = config.augment
        crops = CropSettings(size=self.crop, views=views, scale=aug.scale, ratio=aug.ratio)
        reader = GpuDecodeLoader if config.data.decode == "gpu" else StreamLoader
        return reader(self.listing, crops, config.train.batch_size, seed=config.seed, device=device,
                      rank=rank(), world_size=world_size(), workers=config.data.workers,
                      strict=config.data.strict, labels=labels, labelled_batches=labelled_batches)


def eval_resize(config: RunConfig, crop: int) -> int:
    """The shorter side images are resized to before their centre crop: data.eval_resize, else crop * 256 / 224."""
    return config.data.eval_resize or round(crop * 256 / 224)


def open_training_inputs(config: RunConfig, progress: bool) -> TrainingInputs:
    """The pretraining split: streamed when data.stream (or its automatic choice) says so, else decoded.

    On the cached path rank 0 decodes first and the other ranks then read its cache.
    """
    data = config.data
    split = data.pretrain_split()
    listing = streamed_listing(data, data.dataset, split, data.root)
    if listing is not None:
        crop = config.augment.size or data.image_size or 224
        return TrainingInputs(split, listing.labels, len(listing.classes), listing=listing, crop=crop)
    if data.decode == "gpu":
        raise ConfigError("data.decode=gpu decodes on the streaming path; add --set data.stream=true")

    def read() -> ImageArrays:
        return load_split(data.dataset, split, data.root, download=data.download, cache_dir=data.cache_dir,
                          image_size=data.image_size, progress=progress and is_main(),
                          verify=data.verify_cache)

    arrays = read() if is_main() else None
    barrier()
    arrays = arrays if arrays is not None else read()
    return TrainingInputs(split, np.asarray(arrays.labels, dtype=np.int64), arrays.num_classes, arrays=arrays)
