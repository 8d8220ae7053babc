"""Seeded, shardable index batches over a uint8 image array, delivered on the device."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from relssl.data.batch_indices import LabelledBatches, batch_indices, labelled_floor
from relssl.errors import ConfigError

# Arrays up to this size are copied to the accelerator once, so a step only indexes device
# memory; bigger ones stay memory-mapped on the host and are copied batch by batch. On the CPU
# an array is copied into RAM when it takes at most half of the memory available; otherwise it
# is read from its memory map by a background thread, PREFETCH steps ahead of the training.
DEVICE_RESIDENT_BYTES = 4 * 1024**3
PREFETCH = 4


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
        resident: bool | None = None,
        labelled_batches: LabelledBatches | None = None,
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
        if resident is None:
            resident = images.nbytes <= (DEVICE_RESIDENT_BYTES if self.device.type == "cuda" else _spare_ram() // 2)
        self._on_device = resident
        self.cropped = False  # the trainer takes the crops (the streaming reader hands crops instead)
        if resident:
            self.images = torch.from_numpy(np.array(images, copy=True)).to(self.device)  # memmap -> owned RAM
        else:
            self.images_host = images
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64)).to(self.device)
        # semi-supervised runs with few labels: every batch holds at least this many labelled images (data/batch_indices.py)
        self.labelled_floor = labelled_floor(self.labels.cpu(), batch_size, labelled_batches)
        self.labelled_rest = labelled_batches.rest if labelled_batches else "all"

    @property
    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the last partial batch is dropped)."""
        return self.num_images // self.batch_size

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's (steps, m) image indices for `epoch` (the streaming reader draws the same)."""
        return batch_indices(self.labels, self.batch_size, self.labelled_floor, self.seed, epoch, self.rank,
                             self.world_size, self.labelled_rest)

    def iterate(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches of `epoch`, skipping the first `start_step` (for mid-epoch resume)."""
        indices = self.epoch_indices(epoch)
        if not self._on_device:
            yield from self._prefetched(indices[start_step:])
            return
        for step in range(start_step, len(indices)):
            idx_dev = indices[step].to(self.device, non_blocking=True)
            yield self.images[idx_dev], self.labels[idx_dev], idx_dev

    def _read(self, idx: torch.Tensor) -> torch.Tensor:
        """One batch from the memory map, in `idx` order (rows are read sorted: kinder to the disk)."""
        order = np.argsort(idx.numpy(), kind="stable")
        batch = np.empty((len(idx), *self.images_host.shape[1:]), dtype=np.uint8)
        batch[order] = self.images_host[idx.numpy()[order]]
        out = torch.from_numpy(batch)
        return out.pin_memory() if self.device.type == "cuda" else out

    def _prefetched(self, steps: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batches read from the memory map by a background thread, PREFETCH steps ahead of training."""
        ready: queue.Queue[torch.Tensor | BaseException | None] = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()

        def read_ahead() -> None:
            try:
                for idx in steps:
                    if stop.is_set():
                        return
                    ready.put(self._read(idx))
            except BaseException as err:  # a failed read reaches the training thread, not a silent thread
                ready.put(err)
            ready.put(None)

        reader = threading.Thread(target=read_ahead, name="relssl-memmap-prefetch", daemon=True)
        reader.start()
        try:
            for idx in steps:
                batch = ready.get()
                if isinstance(batch, BaseException):
                    raise batch
                assert batch is not None
                idx_dev = idx.to(self.device, non_blocking=True)
                yield batch.to(self.device, non_blocking=True), self.labels[idx_dev], idx_dev
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    ready.get_nowait()
                reader.join(timeout=0.01)


def _spare_ram() -> int:
    """Bytes of memory this machine has available now (a large number where it cannot tell)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 62
