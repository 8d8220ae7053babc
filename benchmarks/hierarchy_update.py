"""Cost of RCL's online hierarchical clustering: `OnlineHierarchy.initialize` and `.update`.

Features: N samples on the unit sphere from a three-tier Gaussian hierarchy (20 super-classes
x 5 groups x 5 classes), plus a share of uniformly random points that DBSCAN calls noise.
`initialize` runs the warm-up DBSCAN (radii 0.6/0.7/0.8, min-samples 4) on all of them; then
each `update` gets a batch of random indices whose features are the originals plus a small
drift, and a share of them (`--relabel`) moved to another random class, so that clusters
really have to split and merge. Prints the median / p90 / max ms per update and, per level,
the mean number of touched, split-checked, created and merged clusters.

    PYTHONPATH=src python benchmarks/hierarchy_update.py [--n 50000] [--dims 128 256]
        [--batch 256] [--updates 300] [--threads 1] [--device cpu]

`--threads 1` by default: on a machine shared with other jobs, torch's intra-op threads
spin-wait and a 50,000-element op can take 100x longer with 2 threads than with 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from relssl.cluster import OnlineHierarchy

TIERS = (20, 5, 5)  # super-classes, groups per super-class, classes per group
SPREAD = (0.5, 0.4, 0.35)  # norm of the offset: group from super, class from group, sample from class


def clustered_features(n: int, d: int, noise_share: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) unit features from the Gaussian hierarchy + uniform noise, and the (C, d) class centres."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(TIERS[0], d, generator=g), dim=1)
    for branching, spread in zip(TIERS[1:], SPREAD[:-1]):
        centres = centres.repeat_interleave(branching, 0)
        centres = F.normalize(centres + spread / d**0.5 * torch.randn(centres.shape, generator=g), dim=1)
    x = sample_around(centres, torch.randint(len(centres), (n,), generator=g), g)
    noisy = torch.rand(n, generator=g) < noise_share
    x[noisy] = F.normalize(torch.randn(int(noisy.sum()), d, generator=g), dim=1)
    return x, centres


def sample_around(centres: torch.Tensor, which: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    d = centres.shape[1]
    return F.normalize(centres[which] + SPREAD[-1] / d**0.5 * torch.randn(len(which), d, generator=g), dim=1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, load average {load:.1f}"
    )


def run(n: int, d: int, args: argparse.Namespace) -> None:
    x, centres = clustered_features(n, d, args.noise, seed=d)
    oh = OnlineHierarchy(n, 4, device=args.device)
    t0 = time.perf_counter()
    oh.initialize(x)
    init_s = time.perf_counter() - t0
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"N={n} d={d}: initialize {init_s:.1f} s (peak RSS so far {rss_gb:.2f} GiB); clusters per level "
        f"{oh.num_clusters}; conformity before enforcement {oh.conformity:.4f}"
    )
    g = torch.Generator().manual_seed(1000 + d)
    base = x.clone()
    times, stats = [], []
    for step in range(args.warmup + args.updates):
        idx = torch.randperm(n, generator=g)[: args.batch]
        moved = torch.rand(args.batch, generator=g) < args.relabel
        base[idx[moved]] = sample_around(centres, torch.randint(len(centres), (int(moved.sum()),), generator=g), g)
        feats = F.normalize(base[idx] + args.drift / d**0.5 * torch.randn(args.batch, d, generator=g), dim=1)
        idx, feats = idx.to(args.device), feats.to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        st = oh.update(idx, feats)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(1000 * (time.perf_counter() - t0))
            stats.append(st)
    times.sort()
    p90 = times[int(0.9 * (len(times) - 1))]
    print(
        f"  update (batch {args.batch}, {args.updates} timed after {args.warmup}): median {statistics.median(times):.2f} ms, "
        f"p90 {p90:.2f} ms, max {times[-1]:.2f} ms"
    )
    for field in ("touched", "checked", "created", "merged"):
        means = [statistics.fmean(getattr(s, field)[h] for s in stats) for h in range(3)]
        print(f"  mean {field:7s} clusters per update, levels 1/2/3: " + " / ".join(f"{m:.1f}" for m in means))
    print(f"  clusters per level after the updates: {oh.num_clusters}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dims", type=int, nargs="+", default=[128, 256])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.1, help="share of uniformly random samples")
    p.add_argument("--drift", type=float, default=0.1, help="norm of the per-update feature noise")
    p.add_argument("--relabel", type=float, default=0.05, help="share of batch samples moved to another class")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(machine())
    for d in args.dims:
        run(args.n, d, args)


if __name__ == "__main__":
    main()
