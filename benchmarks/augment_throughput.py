"""Throughput of relssl's batched ViewAugment against the reference per-image PIL pipeline.

(a) augmentation alone: views/s of ``ViewAugment`` (uint8 batch -> K*M normalised views on the
    device) vs. the reference implementation's pipeline: a Dataset whose ``__getitem__`` makes
    K torchvision ``Compose`` views of one PIL image, read through a DataLoader with
    ``os.cpu_count()`` workers.
(b) a full Conv-4 Relational Reasoning training step (backbone, K(K-1)M aggregated pairs,
    relation head, focal BCE, Adam) fed by each pipeline: steps/s. With the DataLoader the PIL
    workers run concurrently with the step, as in the reference code.

Images: real CIFAR-10 JPEGs from ``$RELSSL_CIFAR10/train/<class>/*.jpg`` (or ``$RELSSL_CIFAR10/<class>/*.jpg``) if that variable is set,
else random uint8 images (the script says which). ``--libraries`` also times kornia and
torchvision.transforms.v2 and checks whether they draw parameters per sample.

The output ends with exactly two lines: ``speedup augmentation: <r>x`` and ``speedup step: <r>x``.

    PYTHONPATH=src python benchmarks/augment_throughput.py [--k 32] [--m 64] [--batches 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from relssl.augment import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, ViewAugment
from relssl.benchmark.machine import machine_info

SIZE = 32


# ---------------------------------------------------------------- setup


def load_images(n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """n uint8 (n, 32, 32, 3) images: CIFAR-10 JPEGs from $RELSSL_CIFAR10 (its train/ folder) if set, else random."""
    root = os.environ.get("RELSSL_CIFAR10")
    if root:
        folder = Path(root) / "train" if (Path(root) / "train").is_dir() else Path(root)  # CI's layout or a class folder root
        files = sorted(folder.glob("*/*.jpg"))
        if not files:
            raise SystemExit(f"RELSSL_CIFAR10={root}: no <class>/*.jpg files there; unset it or fix the path")
        rng = np.random.default_rng(seed)
        picked = [files[i] for i in rng.choice(len(files), size=min(n, len(files)), replace=False)]
        arrays = [np.asarray(Image.open(f).convert("RGB").resize((SIZE, SIZE))) for f in picked]
        images = np.stack([arrays[i % len(arrays)] for i in range(n)])
        return images, f"{n} real CIFAR-10 images from {root} ({len(files)} files)"
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    return images, f"{n} random uint8 images (set RELSSL_CIFAR10 for real CIFAR-10)"


def reference_transform(cfg: AugmentConfig) -> T.Compose:
    """The reference implementation's per-image CIFAR-10 pipeline (torchvision v1 on PIL)."""
    return T.Compose(
        [
            T.RandomResizedCrop(SIZE, scale=cfg.scale, ratio=cfg.ratio),
            T.RandomHorizontalFlip(cfg.flip_p),
            T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
            T.RandomGrayscale(cfg.gray_p),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
        ]
    )


class PILViews(Dataset):
    """K augmented views of one image per item, made one by one with PIL (the reference design)."""

    def __init__(self, images: np.ndarray, k: int, transform: Callable) -> None:
        self.images, self.k, self.transform = images, k, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = Image.fromarray(self.images[i])
        return torch.stack([self.transform(img) for _ in range(self.k)])  # (K, 3, H, W)


def pil_batches(images: np.ndarray, k: int, m: int, cfg: AugmentConfig, workers: int) -> Iterator[torch.Tensor]:
    """View-major (K*M, 3, H, W) batches from the per-image PIL DataLoader (workers stop when it is closed)."""
    loader = DataLoader(
        PILViews(images, k, reference_transform(cfg)), batch_size=m, shuffle=True, drop_last=True, num_workers=workers
    )
    while True:
        for batch in loader:  # (M, K, 3, H, W) -> view-major
            yield batch.transpose(0, 1).reshape(-1, *batch.shape[2:])


def our_batches(
    images: np.ndarray, k: int, m: int, cfg: AugmentConfig, device: torch.device, seed: int = 0
) -> Iterator[torch.Tensor]:
    """View-major (K*M, 3, H, W) batches: shuffled uint8 index batch -> device -> ViewAugment."""
    cache = torch.from_numpy(images)  # the uint8 (N, H, W, 3) cache of the data path
    aug = ViewAugment(cfg)
    gen = torch.Generator(device=device).manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(cache), generator=order)
        for start in range(0, len(cache) - m + 1, m):
            batch = cache[perm[start : start + m]].to(device, non_blocking=True)
            yield aug(batch, k, gen)


def premade_batches(
    images: np.ndarray, k: int, m: int, cfg: AugmentConfig, device: torch.device
) -> Iterator[torch.Tensor]:
    """The same augmented batch over and over: the cost of the training step alone."""
    views = next(our_batches(images, k, m, cfg, device))
    while True:
        yield views


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(make: Callable[[], Iterator[torch.Tensor]], consume: Callable[[torch.Tensor], None], n: int,
          warmup: int, device: torch.device) -> float:
    """Seconds for n batches produced by a fresh ``make()`` and consumed, after ``warmup`` untimed ones.

    A fresh pipeline per measurement (its DataLoader workers exit afterwards) keeps one
    pipeline's background workers from competing with, or prefetching during, another's turn.
    """
    batches = make()
    try:
        for _ in range(warmup):
            consume(next(batches))
        sync(device)
        start = time.perf_counter()
        for _ in range(n):
            consume(next(batches))
        sync(device)
        return time.perf_counter() - start
    finally:
        batches.close()


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median seconds of each run over ``rounds`` rounds, the runs alternating within a round.

    Alternating spreads background load on a shared machine evenly over the pipelines compared.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- (a) augmentation alone


def augmentation_benchmark(images: np.ndarray, args: argparse.Namespace, cfg: AugmentConfig) -> float:
    """Print views/s of both pipelines; return the speedup of ours over PIL."""
    device, k, m, n = torch.device(args.device), args.k, args.m, args.batches
    threads = torch.get_num_threads()

    def ours_one_thread() -> float:
        torch.set_num_threads(1)
        try:
            return timed(lambda: our_batches(images, k, m, cfg, device), lambda v: None, n, args.warmup, device)
        finally:
            torch.set_num_threads(threads)

    runs = {
        "ours": lambda: timed(lambda: our_batches(images, k, m, cfg, device), lambda v: None, n, args.warmup, device),
        "pil": lambda: timed(lambda: pil_batches(images, k, m, cfg, args.workers), lambda v: None, n, args.warmup,
                             torch.device("cpu")),
    }
    if device.type == "cpu" and threads > 1:
        runs["ours1"] = ours_one_thread
    t = interleaved(runs, args.rounds)
    views = n * k * m
    print(f"(a) augmentation, K={k} M={m}: median of {args.rounds} rounds of {n} timed batches "
          f"after {args.warmup} warm-up")
    labels = {
        "ours": f"ViewAugment (batched, {device}, {threads} threads)",
        "ours1": f"ViewAugment (batched, {device}, 1 thread)",
        "pil": f"PIL per image, DataLoader {args.workers} workers",
    }
    for name, label in labels.items():
        if name in t:
            print(f"    {label:40s} {views / t[name]:10.0f} views/s")
    return t["pil"] / t["ours"]


# ---------------------------------------------------------------- (b) training step


def make_train_step(k: int, device: torch.device) -> Callable[[torch.Tensor], None]:
    """One Conv-4 Relational Reasoning step (cat aggregation, focal BCE gamma=2, Adam 1e-3)."""
    from relssl.losses import focal_bce, relational_pairs
    from relssl.models import RelationHead, create_backbone

    torch.manual_seed(0)
    backbone = create_backbone("conv4").to(device)
    head = RelationHead(2 * backbone.feature_dim).to(device)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-3)

    def step(views: torch.Tensor) -> None:
        views = views.to(device, non_blocking=True)
        pairs, targets = relational_pairs(backbone(views), k, aggregation="cat")
        loss = focal_bce(head(pairs), targets, gamma=2.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_benchmark(images: np.ndarray, args: argparse.Namespace, cfg: AugmentConfig) -> float:
    """Print training steps/s fed by each pipeline; return the speedup of ours over PIL."""
    device, k, m, n = torch.device(args.device), args.k, args.m, args.step_batches
    step = make_train_step(k, device)
    runs = {
        "alone": lambda: timed(lambda: premade_batches(images, k, m, cfg, device), step, n, args.warmup, device),
        "ours": lambda: timed(lambda: our_batches(images, k, m, cfg, device), step, n, args.warmup, device),
        "pil": lambda: timed(lambda: pil_batches(images, k, m, cfg, args.workers), step, n, args.warmup, device),
    }
    t = interleaved(runs, args.rounds)
    print(f"(b) Conv-4 Relational Reasoning training step, K={k} M={m}: median of {args.rounds} rounds of {n} timed "
          f"steps after {args.warmup} warm-up")
    print(f"    {'step alone (pre-made views)':40s} {n / t['alone']:10.3f} steps/s")
    for name, label in (("ours", "fed by ViewAugment"), ("pil", f"fed by PIL DataLoader ({args.workers} workers)")):
        print(f"    {label:40s} {n / t[name]:10.3f} steps/s  ({n * k * m / t[name]:.0f} views/s)")
    return t["pil"] / t["ours"]


# ---------------------------------------------------------------- libraries (optional)


def library_benchmark(images: np.ndarray, args: argparse.Namespace, cfg: AugmentConfig) -> None:
    """Time kornia.augmentation and torchvision.transforms.v2 on the same K*M views; check per-sample params."""
    device, k, m = torch.device(args.device), args.k, args.m
    batch = torch.from_numpy(images[:m]).to(device).permute(0, 3, 1, 2).float().div(255)
    same = batch[:1].expand(k * m, -1, -1, -1).contiguous()  # identical images: per-sample params differ

    def rate(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, reps: int = 3) -> float:
        fn(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn(x)
        sync(device)
        return reps * x.shape[0] / (time.perf_counter() - start)

    def per_sample(out: torch.Tensor) -> bool:
        """Did identical inputs get different views (i.e. were parameters drawn per sample)?"""
        return bool((out - out[:1]).abs().flatten(1).amax(1).gt(1e-4).float().mean() > 0.5)

    rows = []
    ours = ViewAugment(cfg)
    u8 = torch.from_numpy(images[:m]).to(device)
    rows.append(("relssl ViewAugment (uint8 input)", rate(lambda x: ours(x, k), u8, 5) * k,
                 per_sample(ours(u8[:1].expand(m, -1, -1, -1), k))))
    try:
        import kornia.augmentation as KA

        kornia_aug = torch.nn.Sequential(
            KA.RandomResizedCrop((SIZE, SIZE), scale=cfg.scale, ratio=cfg.ratio),
            KA.RandomHorizontalFlip(p=cfg.flip_p),
            KA.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p),
            KA.RandomGrayscale(p=cfg.gray_p),
            KA.Normalize(torch.tensor(cfg.mean), torch.tensor(cfg.std)),
        ).to(device)
        many = batch.repeat(k, 1, 1, 1)  # view-major K*M float images
        rows.append(("kornia.augmentation (float input)", rate(kornia_aug, many), per_sample(kornia_aug(same))))
    except ImportError:
        print("    kornia not installed: skipped")
    from torchvision.transforms import v2

    tv2 = v2.Compose(
        [
            v2.RandomResizedCrop(SIZE, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
            v2.RandomHorizontalFlip(cfg.flip_p),
            v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
            v2.RandomGrayscale(cfg.gray_p),
            v2.Normalize(cfg.mean, cfg.std),
        ]
    )
    many = batch.repeat(k, 1, 1, 1)
    rows.append(("torchvision v2 on the batch", rate(tv2, many), per_sample(tv2(same))))
    loop = lambda x: torch.stack([tv2(im) for im in x])  # noqa: E731  per-image loop: per-sample, slow
    rows.append(("torchvision v2, per-image loop", rate(loop, many[:256], 2), per_sample(loop(same[:256]))))
    print(f"libraries, K={k} M={m} ({device}, {torch.get_num_threads()} threads):")
    for name, r, ps in rows:
        print(f"    {name:38s} {r:10.0f} views/s   per-sample parameters: {'yes' if ps else 'NO'}")


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=32, help="views per image, K")
    parser.add_argument("--m", type=int, default=64, help="images per batch, M")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per round for (a)")
    parser.add_argument("--step-batches", type=int, default=5, help="timed training steps per round for (b)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches before timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers for PIL")
    parser.add_argument("--libraries", action="store_true", help="also time kornia and torchvision v2")
    parser.add_argument("--skip-step", action="store_true", help="skip (b)")
    args = parser.parse_args()
    cfg = AugmentConfig(size=SIZE, mean=CIFAR10_MEAN, std=CIFAR10_STD)

    n_images = args.m * (args.warmup + max(args.batches, args.step_batches)) * 2
    images, source = load_images(n_images)
    print(machine_info(torch.device(args.device)))
    print(f"images: {source}")
    if args.libraries:
        library_benchmark(images, args, cfg)
    speedup_aug = augmentation_benchmark(images, args, cfg)
    speedup_step = float("nan") if args.skip_step else step_benchmark(images, args, cfg)
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes on the machine distort CPU timings)")
    print(f"speedup augmentation: {speedup_aug:.2f}x")
    print(f"speedup step: {speedup_step:.2f}x")


if __name__ == "__main__":
    main()
