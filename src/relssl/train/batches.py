"""Seeded, shardable index batches over a uint8 image array, delivered on the device."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from relssl.errors import ConfigError

# Arrays up to this size are copied to the accelerator once, so a step only indexes device
# memory; bigger ones stay memory-mapped on the host and are copied batch by batch.
DEVICE_RESIDENT_BYTES = 4 * 1024**3


class BatchStream:
    """Yields (uint8 images (m,H,W,3), labels (m,), dataset indices (m,)) on `device`, reproducible per epoch.

    `batch_size` is the global batch M of a step; with `world_size` processes each rank takes its
    own slice of m = M / world_size images, rank after rank. The permutation of epoch e is drawn
    from a generator seeded with (seed, e) and does not depend on the number of processes, so
    every image is seen once per epoch over all ranks and a run resumes at any world size.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size={batch_size} is the global batch of a step; it must divide evenly over the "
                f"{world_size} processes (e.g. {batch_size - batch_size % world_size or world_size})"
            )
        if batch_size // world_size < 2:
            raise ConfigError(f"train.batch_size={batch_size} leaves fewer than 2 images per process for "
                              f"{world_size} processes; BatchNorm needs at least 2")
        if len(images) < batch_size:
            raise ConfigError(
                f"train.batch_size={batch_size} exceeds the {len(images)} training images; lower --batch-size"
            )
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.num_images = len(images)
        resident = self.device.type == "cpu" or images.nbytes <= DEVICE_RESIDENT_BYTES
        self._on_device = resident
        if resident:
            self.images = torch.from_numpy(np.array(images, copy=True)).to(self.device)  # memmap -> owned RAM
        else:
            self.images_host = images
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped)."""
        return self.num_images // self.batch_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's (steps, m) image indices for `epoch`."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.num_images, generator=gen)[: self.steps_per_epoch * self.batch_size]
        return perm.view(self.steps_per_epoch, self.world_size, self.local_batch_size)[:, self.rank]

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of `epoch`, skipping the first `start_step` (for mid-epoch resume)."""
        indices = self.epoch_indices(epoch)
        for step in range(start_step, len(indices)):
            idx = indices[step]
            if self._on_device:
                idx_dev = idx.to(self.device, non_blocking=True)
                yield self.images[idx_dev], self.labels[idx_dev], idx_dev
            else:
                order = np.sort(idx.numpy())  # sorted reads are kinder to a memory map
                batch = torch.from_numpy(self.images_host[order]).pin_memory()
                idx_dev = torch.from_numpy(order).to(self.device, non_blocking=True)
                yield batch.to(self.device, non_blocking=True), self.labels[idx_dev], idx_dev
