"""Devices and process groups. Every collective here is a no-op in a single process, so code stays plain.

A multi-process run is started by `torchrun` (or SLURM's `srun` with torchrun's variables set):
`start_process_group` reads RANK / WORLD_SIZE / LOCAL_RANK from the environment, picks this
process's device and joins the group; relssl never launches processes itself. See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_gather

from relssl.errors import ConfigError

__all__ = [
    "Launch", "all_gather_objects", "all_reduce_max", "all_reduce_mean", "barrier", "broadcast_object",
    "broadcast_tensor", "gather_no_grad", "gather_with_grad", "is_distributed", "is_main", "launch_from_env",
    "rank", "rank_slice", "resolve_device", "start_process_group", "stop_process_group", "world_size",
]

BACKENDS = ("auto", "gloo", "nccl")
#: How long a rank waits in a collective for the others (a slow first epoch hook, a checkpoint write).
TIMEOUT = timedelta(minutes=30)
T = TypeVar("T")


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


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a launch: its global rank, the number of processes, its rank on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def multi_process(self) -> bool:
        return self.world_size > 1


def launch_from_env(environ: dict[str, str] | None = None) -> Launch:
    """The launch torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (one process when they are unset)."""
    env = os.environ if environ is None else environ
    try:
        launch = Launch(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise ConfigError(f"RANK={launch.rank} and WORLD_SIZE={launch.world_size} do not describe a launch")
    return launch


def _process_device(spec: str, launch: Launch) -> torch.device:
    """This process's device: with several processes, `auto` / `cuda` mean the GPU of its local rank."""
    if not launch.multi_process or spec not in ("auto", "cuda"):
        return resolve_device(spec)
    if torch.cuda.is_available():
        if launch.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {launch.local_rank} has no GPU: this node shows "
                              f"{torch.cuda.device_count()}; start at most that many processes per node")
        return torch.device("cuda", launch.local_rank)
    if spec == "cuda":
        raise ConfigError("train.device=cuda but no CUDA device is available; use --set train.device=cpu")
    return torch.device("cpu")


def start_process_group(backend: str = "auto", device_spec: str = "auto", launch: Launch | None = None
                        ) -> tuple[torch.device, bool]:
    """Join the launch's process group (if there is one); return this process's device and whether we joined.

    `backend`: `nccl` for GPUs, `gloo` for CPUs, `auto` picks by device. A group that already
    exists (a test, a notebook) is used as it is and not joined again.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"train.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    launch = launch if launch is not None else launch_from_env()
    if dist.is_available() and dist.is_initialized():
        return _process_device(device_spec, Launch(dist.get_rank(), dist.get_world_size(), launch.local_rank)), False
    device = _process_device(device_spec, launch)
    if not launch.multi_process:
        return device, False
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run a single process")
    chosen = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and device.type != "cuda":
        raise ConfigError("train.backend=nccl needs CUDA devices, but this process runs on the CPU; "
                          "use --set train.backend=gloo (or auto)")
    if chosen == "nccl" and not dist.is_nccl_available():
        raise ConfigError("train.backend=nccl: this PyTorch build has no NCCL; use gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(chosen, timeout=TIMEOUT, rank=launch.rank, world_size=launch.world_size)
    return device, True


def stop_process_group(wait: bool = True) -> None:
    """Leave the process group, after a last barrier (`wait`) so that no rank is still in a collective."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Whether this process is rank 0, the one that writes files and evaluates."""
    return rank() == 0


def barrier() -> None:
    """Wait until every rank gets here."""
    if is_distributed():
        dist.barrier()


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
    """Like `gather_no_grad`, but gradients flow back to the local slice (torch.distributed.nn).

    The backward sums, over all ranks, the gradient each rank's loss sends to this rank's rows.
    """
    if not is_distributed():
        return tensor
    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def rank_slice(rows: int) -> slice:
    """The rows of a rank-ordered gathered batch that belong to this rank (local batch of `rows`)."""
    start = rank() * rows
    return slice(start, start + rows)


@torch.no_grad()
def broadcast_tensor(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank `src`'s values in `tensor` on every rank (in place; every rank passes the same shape)."""
    if is_distributed():
        dist.broadcast(tensor, src)
    return tensor


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` (anything picklable; tensors arrive on the CPU) on every rank."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of `tensor` (a new tensor; the input is left as it is)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / dist.get_world_size()


def all_reduce_max(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (one small collective and a host sync)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _collective_device() -> torch.device | None:
    """The device object collectives travel on: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None
