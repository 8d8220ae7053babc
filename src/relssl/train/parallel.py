"""A method prepared for several processes: SyncBatchNorm on request, DistributedDataParallel, per-rank RNGs."""

from __future__ import annotations

import inspect
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from relssl.distributed import is_distributed, rank, world_size
from relssl.errors import ConfigError
from relssl.models.sync_bn import sync_batchnorm

__all__ = ["augment_seed", "convert_sync_batchnorm", "wrap_ddp"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def convert_sync_batchnorm(model: ModuleT, device: torch.device) -> ModuleT:
    """Every BatchNorm of `model` (backbone and heads) as a SyncBatchNorm: statistics over the global batch."""
    if device.type != "cuda":
        raise ConfigError("backbone.sync_bn=true needs CUDA devices (SyncBatchNorm does not run on the CPU); "
                          "drop it, or run on GPUs")
    return sync_batchnorm(model)  # the same root module, children swapped (timm's fused BN + act kept)


def _no_buffer_sync() -> dict[str, Any]:
    """DDP's option to leave buffers alone at every forward (its name changed in newer PyTorch)."""
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when running on several processes (itself otherwise).

    Gradients are averaged over ranks after every backward. Buffers are not broadcast at every
    forward: the queues and cluster labels are kept identical by gathering (broadcasting a
    98,304-key queue each step would cost more than the step), and BatchNorm running statistics
    stay per rank, as without DDP; rank 0's are the ones checkpointed. DDP broadcasts rank 0's
    parameters once, when it wraps the model.
    """
    if not is_distributed():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **_no_buffer_sync())


def augment_seed(seed: int) -> int:
    """This rank's augmentation seed: the run's seed on rank 0 (as in one process), distinct on the others."""
    return seed + 1_000_003 * rank() if world_size() > 1 else seed
