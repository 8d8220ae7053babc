"""Per-step cost of RCL against NNCLR at the same backbone, batch and queue size, side by side.

NNCLR is run in the form the RCL paper compares against (§5.2, Table 4): a momentum key
encoder, the support queue as negatives and one predictor, so the two methods differ only by
what RCL adds: H criterion-specific predictors, H loss terms over the queue, the label lookup
and the online hierarchical clustering update. A step is the whole training step: batched
augmentation, forward, backward, optimizer, EMA update (and, for RCL, the clustering update).

Both queues are pre-filled with `--queue-size` random unit vectors (the cost of the nearest-
neighbour search and of the loss does not depend on their values), and RCL's hierarchy is
initialised, before timing, on N = `--num-images` features: the keys of real CIFAR-10 images
from $RELSSL_CIFAR10 computed by the random-init key encoder when that variable is set, else
synthetic clustered unit vectors (the script says which, and prints the cluster counts, which
drive the cost of an update). The methods alternate in rounds so background load on a shared
machine falls on both; the figure is the median over rounds.

The last line printed is ``rcl overhead over nnclr: <percent>%`` (the paper measured +18 % per
epoch, Table 4: 776 s vs 659 s on 64 GPUs; our target is at most +15 %).

    python3 benchmarks/rcl_overhead.py [--backbone resnet18] [--batch-size 128] [--queue-size 98304]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from relssl.augment import AugmentConfig, ViewAugment, to_normalized
from relssl.benchmark.machine import machine_info
from relssl.evaluate import extract_features
from relssl.models import create_backbone
from relssl.optim import build_optimizer
from relssl.train import build_config, build_method


def load_images(n: int, seed: int) -> tuple[np.ndarray, str]:
    """n uint8 32x32 images: CIFAR-10 train images from $RELSSL_CIFAR10 if set, else random pixels."""
    root = os.environ.get("RELSSL_CIFAR10")
    if root:
        from relssl.data import load_split

        data = load_split("imagefolder", "train", root=str(Path(root)), progress=False)
        images = np.asarray(data.images[:n])
        return images, f"{len(images)} real CIFAR-10 training images from {root}"
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), f"{n} random images (set RELSSL_CIFAR10 for real ones)"


def clustered_features(n: int, dim: int, seed: int) -> torch.Tensor:
    """Unit vectors in nested blobs (10 coarse centres, 10 fine centres each), a stand-in for trained keys."""
    gen = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize

    def noise(rows: int, scale: float) -> torch.Tensor:  # offsets of about `scale` in norm
        return scale * torch.randn(rows, dim, generator=gen) / dim**0.5

    coarse = unit(torch.randn(10, dim, generator=gen), dim=1)
    fine = unit(coarse.repeat_interleave(10, 0) + noise(100, 0.35), dim=1)
    which = torch.randint(0, 100, (n,), generator=gen)
    return unit(fine[which] + noise(n, 0.15), dim=1)


def build(method: str, args: argparse.Namespace, num_images: int):
    """A method and its optimizer, configured identically except for what RCL adds."""
    heads = {"projector_hidden": [args.projector_hidden] * 2, "projector_dim": args.dim,
             "predictor_hidden": args.predictor_hidden, "queue_size": args.queue_size, "momentum": 0.99}
    section = dict(heads, negatives="queue") if method == "nnclr" else dict(heads, warmup_epochs=0)
    config = build_config({"method": method, "backbone": {"name": args.backbone}, method: section,
                           "optim": {"name": "lars", "lr": 0.3, "weight_decay": 1e-6}})
    options = {"cifar_stem": True} if args.backbone in ("resnet18", "resnet34", "resnet50") else {}
    backbone = create_backbone(args.backbone, **options)
    torch.manual_seed(args.seed)
    model = build_method(config, backbone, num_images=num_images, num_classes=10)
    return model, build_optimizer(config.optim, model)


def prefill(model, num_images: int, seed: int) -> None:
    """Fill the support queue with random unit keys pointing at random images."""
    gen = torch.Generator().manual_seed(seed)
    q = model.queue
    keys = torch.randn(q.size, q.keys.shape[1], generator=gen)
    idx = torch.randint(0, num_images, (q.size,), generator=gen)
    q.enqueue(keys, idx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", help="resnet18/34/50 get the CIFAR stem (default resnet18)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--queue-size", type=int, default=98304, help="support queue (default 1.5 * 2^16, the paper's)")
    parser.add_argument("--num-images", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--projector-hidden", type=int, default=2048)
    parser.add_argument("--predictor-hidden", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    device = torch.device("cpu")
    print(machine_info(device))
    images, source = load_images(args.num_images, args.seed)
    n = len(images)
    print(f"images: {source}")
    aug_cfg = AugmentConfig(size=32)
    augment = ViewAugment(aug_cfg)
    gen = torch.Generator().manual_seed(args.seed)

    methods = {}
    for name in ("nnclr", "rcl"):
        model, opt = build(name, args, n)
        prefill(model, n, args.seed)
        methods[name] = (model, opt)
    rcl = methods["rcl"][0]
    if os.environ.get("RELSSL_CIFAR10"):
        t0 = time.perf_counter()
        keys = extract_features(rcl.target.target, images, device=device, desc="keys",
                                normalize=functools.partial(to_normalized, *aug_cfg.normalization(), size=32))
        features, what = torch.nn.functional.normalize(keys, dim=1), f"random-init keys of the images ({time.perf_counter() - t0:.0f} s)"
    else:
        features, what = clustered_features(n, args.dim, args.seed), "synthetic clustered unit vectors"
    rcl.hierarchy = rcl._new_hierarchy()
    t0 = time.perf_counter()
    rcl.hierarchy.initialize(features)
    rcl.level_labels.copy_(rcl.hierarchy.labels)
    rcl.clustered.fill_(True)
    print(f"hierarchy: initialised on {what} in {time.perf_counter() - t0:.1f} s; clusters per level "
          f"{tuple(rcl.hierarchy.num_clusters)} (level 0 = instances)")
    print(f"setting: {args.backbone}, batch {args.batch_size} x 2 views, queue {args.queue_size}, d {args.dim}, "
          f"projector {args.projector_hidden}, predictor {args.predictor_hidden}, H = {rcl.num_criteria} criteria")

    def step(name: str) -> None:
        model, opt = methods[name]
        idx = torch.randint(0, n, (args.batch_size,), generator=gen)
        views = augment(torch.from_numpy(images[idx.numpy()]), 2, generator=gen)
        out = model.training_step(views, torch.full((args.batch_size,), -1), idx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        model.on_step_end(1, 1000)

    for name in methods:
        methods[name][0].train()
        for _ in range(args.warmup):
            step(name)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(args.rounds):
        for name in (("nnclr", "rcl") if r % 2 == 0 else ("rcl", "nnclr")):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            times[name].append((time.perf_counter() - t0) / args.steps)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"per-step time, median of {args.rounds} rounds of {args.steps} steps (after {args.warmup} warm-up):")
    for name in methods:
        print(f"  {name:6s} {med[name] * 1000:9.1f} ms   rounds: " + ", ".join(f"{t * 1000:.0f}" for t in times[name]))
    print(f"hierarchy after timing: clusters per level {tuple(rcl.hierarchy.num_clusters)}")
    print(machine_info(device).replace("machine:", "machine at the end:"))
    print(f"rcl overhead over nnclr: {100.0 * (med['rcl'] / med['nnclr'] - 1.0):.1f}%")


if __name__ == "__main__":
    main()
