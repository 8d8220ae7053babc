"""Device and process-group helpers; the latter are no-ops without torch.distributed, so single-process code stays plain."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather

from relssl.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device={spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec!r} but no CUDA device is available; use --set train.device=cpu")
    return device


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0, in rank order (no gradient).

    Every rank receives the same result, which is what keeps queues and cluster state identical
    across ranks. All ranks must pass the same shape.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Like `gather_no_grad`, but gradients flow back to the local slice (torch.distributed.nn)."""
    if not is_distributed():
        return tensor
    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def rank_slice(rows: int) -> slice:
    """The rows of a rank-ordered gathered batch that belong to this rank (local batch of `rows`)."""
    start = rank() * rows
    return slice(start, start + rows)
