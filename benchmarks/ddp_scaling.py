"""Step time and throughput of the real training step on 1 and 2 processes, with the same batch per process.

Each process runs relssl's Trainer step (augmentation, forward, backward, DDP's gradient all-reduce,
optimiser) on its own slice of the global batch, one thread per process; the 2-process run goes
through a process group exactly as under torchrun (gloo on CPUs, NCCL on GPUs). The communication
share of a step is measured by timing the same steps once more with DDP's gradient all-reduce
switched off (`no_sync`): share = (step - step without all-reduce) / step. Methods that gather
features (SimCLR's negatives) also communicate inside the forward; that part is in both timings,
so for them the share printed is a lower bound. Steps alternate between the two timings.

Prints the machine, one line per case and world size, then `scaling <case>: <images/s ratio>x`.

    python3 benchmarks/ddp_scaling.py [--steps 20] [--backend gloo|nccl] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from relssl.augment import AugmentConfig
from relssl.benchmark.machine import machine_info
from relssl.distributed import world_size
from relssl.train import build_backbone, build_config, build_method
from relssl.train.trainer import Trainer

CASES: dict[str, dict[str, Any]] = {
    "relational-conv4-K8": {"method": "relational", "relational.k": 8, "backbone.name": "conv4"},
    "simclr-resnet8": {"method": "simclr", "backbone.name": "resnet8"},
}
PER_RANK_BATCH = 32


def _time_steps(case: str, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Median step time with and without DDP's gradient all-reduce, on this process."""
    world = world_size()
    config = build_config({}, {**CASES[case], "train.batch_size": PER_RANK_BATCH * world, "train.device": str(device),
                               "train.progress": False, "eval.linear": False})
    n = (args.warmup + 2 * args.steps) * PER_RANK_BATCH * world  # one epoch holds every timed step
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    method = build_method(config, build_backbone(config), num_images=n, num_classes=1)
    trainer = Trainer(config, method, images, labels, AugmentConfig(mean=(0.5,) * 3, std=(0.25,) * 3), device,
                      Path(tempfile.mkdtemp()))
    batches = iter(trainer.stream.iterate(0))
    with_comm, without = [], []

    def step(sync: bool) -> float:
        images_, labels_, indices = next(batches)
        start = time.perf_counter()
        if sync or world == 1:
            trainer._step(images_, labels_, indices)
        else:
            with trainer.model.no_sync():  # type: ignore[operator]  # DDP's context manager
                trainer._step(images_, labels_, indices)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(True)
    for _ in range(args.steps):
        with_comm.append(step(True))
        without.append(step(False))
    return {"step": statistics.median(with_comm), "no_sync": statistics.median(without)}


def _worker(rank: int, world: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(1)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(args.backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=10))
    try:
        results = {case: _time_steps(case, args, device) for case in CASES}
        if rank == 0:
            torch.save(results, out)
    finally:
        if world > 1:
            dist.destroy_process_group()


def _run(world: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    folder = Path(tempfile.mkdtemp())
    out = str(folder / "result.pt")
    if world == 1:
        _worker(0, 1, "", args, out)
    else:
        mp.spawn(_worker, args=(world, str(folder / "init"), args, out), nprocs=world, join=True)
    return torch.load(out, weights_only=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backend", default="gloo", choices=("gloo", "nccl"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    if args.backend == "nccl" and args.device != "cuda":
        sys.exit("--backend nccl needs --device cuda")
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit(f"2 processes on GPUs need 2 GPUs; this machine has {torch.cuda.device_count()}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    print(machine_info(torch.device(args.device if args.device == "cpu" else "cuda:0")))
    print(f"backend {args.backend}, {PER_RANK_BATCH} images per process per step, 32x32, one thread per process, "
          f"median of {args.steps} steps")
    single, double = _run(1, args), _run(2, args)
    for case in CASES:
        for world, res in ((1, single[case]), (2, double[case])):
            rate = world * PER_RANK_BATCH / res["step"]
            share = "" if world == 1 else f", communication {max(0.0, 1 - res['no_sync'] / res['step']) * 100:.0f}%"
            print(f"{case}, {world} process(es): step {res['step'] * 1000:.1f} ms, {rate:.0f} images/s{share}")
    for case in CASES:
        ratio = (2 * PER_RANK_BATCH / double[case]["step"]) / (PER_RANK_BATCH / single[case]["step"])
        print(f"scaling {case}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
