"""A FIFO queue of key features (and the dataset index of each) for MoCo v2, NNCLR and RCL."""

from __future__ import annotations

import torch
from torch import nn

from relssl.distributed import gather_no_grad


class FeatureQueue(nn.Module):
    """Ring buffer of the last `size` L2-normalised keys, with their dataset indices.

    Keys are gathered from every rank before they are written, so all ranks hold the same queue
    (the usual multi-GPU MoCo bug is a per-rank queue). Entries start empty: `features()` returns
    only the rows written so far, never random filler. State is in buffers, so checkpoints carry it.
    """

    keys: torch.Tensor
    indices: torch.Tensor
    ptr: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"FeatureQueue needs size >= 1 and dim >= 1; got size={size}, dim={dim}")
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # Host copies of ptr/count, so a training step never waits on the device to read them;
        # the buffers stay the checkpointed truth and refresh these on load.
        self._ptr = 0
        self._count = 0
        self.register_load_state_dict_post_hook(lambda module, _: module._read_pointers())

    def _read_pointers(self) -> None:
        self._ptr, self._count = int(self.ptr), int(self.count)

    def __len__(self) -> int:
        return self._count

    def features(self) -> torch.Tensor:
        """The filled rows (count, dim), oldest position first in storage order."""
        return self.keys[: self._count]

    def sample_indices(self) -> torch.Tensor:
        """Dataset index of every filled row (count,)."""
        return self.indices[: self._count]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, indices: torch.Tensor) -> None:
        """Append this step's keys from all ranks (rank order), overwriting the oldest rows."""
        keys = gather_no_grad(nn.functional.normalize(keys.detach().float(), dim=1))
        indices = gather_no_grad(indices.to(self.indices.device, torch.long))
        if keys.shape[0] != indices.shape[0]:
            raise ValueError(f"enqueue: {keys.shape[0]} keys but {indices.shape[0]} indices")
        if keys.shape[0] > self.size:  # a batch larger than the queue keeps its newest rows
            keys, indices = keys[-self.size :], indices[-self.size :]
        n = keys.shape[0]
        pos = (self._ptr + torch.arange(n, device=self.keys.device)) % self.size
        self.keys[pos] = keys.to(self.keys.dtype)
        self.indices[pos] = indices
        self._ptr, self._count = (self._ptr + n) % self.size, min(self.size, self._count + n)
        self.ptr.fill_(self._ptr)
        self.count.fill_(self._count)
