"""Run a worker in two (or more) CPU processes joined by a gloo process group, for the distributed tests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def run_ranks(worker, tmp: Path, world: int, timeout_s: float = 120.0) -> list[dict]:
    """Spawn `world` processes of `worker(rank, init_file, out_dir)` and load each rank's `rank{r}.pt` result."""
    ctx = mp.start_processes(worker, args=(tmp / "init", tmp), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world} gloo processes did not finish within {timeout_s:.0f} s")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]
