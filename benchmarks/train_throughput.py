"""Time of one whole training step of relssl against a reference-style pipeline and against the bare model step.

Three cases, each on whatever device is present (``--device``):

    rr-conv4             Relational Reasoning, Conv-4, K=32 views of M=64 images of 32x32 per step
    rr-resnet32          the same with the CIFAR ResNet-32
    simclr-resnet18-224  SimCLR, ResNet-18 (torchvision stem), 2 views of 224x224 crops, batch 64 on a CPU
                         (512 on a GPU), read from a folder of full-size JPEGs by relssl's streaming reader

The 32x32 images are random uint8 images in memory, or real CIFAR-10 when ``$RELSSL_CIFAR10`` names
an image folder of it (read with ``relssl.data.load_split("imagefolder", "train", root)``). The
photos are ``--photos DIR``, or a few thousand 400-500 px JPEGs generated once into a temporary
folder (the script says which).

Each case times three alternatives, all through the same relssl ``Trainer`` (built with
``relssl.train.build_config/build_method/build_backbone``) and its own ``Trainer._step``, so the
model step (forward, loss, backward, optimiser, lr schedule; AMP and channels_last as the trainer
chooses on the device) is the same code in all three; only where the views come from differs:

- relssl: batches from ``trainer.stream.iterate(epoch)`` (the in-memory ``BatchStream`` for 32x32,
  the streaming ``StreamLoader`` with ``CropSettings(size=224, views=2)`` for the photos), then
  ``_step`` with its batched ``ViewAugment`` on the device. Timed: the whole loop iteration, fetching
  the batch included.
- reference-style: the Relational Reasoning reference code's data path, a torch ``DataLoader`` with
  the same number of workers over a Dataset whose ``__getitem__`` applies a torchvision
  ``transforms.Compose`` (RandomResizedCrop, RandomHorizontalFlip, ColorJitter(0.8, 0.8, 0.8, 0.2)
  applied with p=0.8, RandomGrayscale(0.2), ToTensor, Normalize) K times to one PIL image (for the
  photos: the JPEG opened with PIL per image, 2 views). The float views go to the device and
  through ``_step`` with the augmentation bypassed (the views are ready).
- floor: ``_step`` on float views already on the device, the same batch every step (no data, no
  augmentation): what the model step costs alone.

Every pipeline is built afresh for each measurement (its DataLoader workers start, warm up for
``--warmup`` steps and exit afterwards), so one pipeline's workers never prefetch or compete during
another's turn; `default_steps` says why the default numbers of warm-up and timed steps suffice for a
steady state. The alternatives alternate within each round, the order rotating from round to
round, and the medians over rounds are reported (the machine is shared and noisy). relssl's step
time is split into data, augmentation, forward, backward and optimiser by hooks on the trainer's
model and optimizer (wall time per phase on a CPU; on a GPU a separate run with
``torch.cuda.synchronize`` after each phase, since the timed runs must not synchronise).

The output ends with ``speedup <case>: <r>x`` (reference-style step time / relssl step time) for each
case, then ``floor share <case>: <p>%`` (relssl step time / floor step time * 100).

    python3 benchmarks/train_throughput.py [--device auto] [--cases rr-conv4 ...] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from relssl.augment import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig
from relssl.benchmark.machine import machine_info
from relssl.data import load_listing, load_split
from relssl.data.listing import Listing
from relssl.data.stream import CropSettings, StreamLoader
from relssl.data.workers import default_workers
from relssl.train import build_backbone, build_config, build_method
from relssl.train.trainer import Trainer

CASES = ("rr-conv4", "rr-resnet32", "simclr-resnet18-224")
PHASES = ("data", "augmentation", "forward", "backward", "optimiser")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL = 32  # side of the Relational Reasoning images
CROP = 224  # side of the SimCLR crops
PHOTO_SIDES = (400, 500)  # generated photos: each side drawn from this range
PHOTO_CLASSES = 4

# Timed and warm-up steps per alternative per round when not given (see `default_steps`).
FAST_STEPS = {"cpu": (5, 2), "cuda": (10, 3)}  # at least; raised to the number of DataLoader workers

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # views or images, labels (M,), dataset indices (M,)
Batches = Generator[Batch, None, None]


# ---------------------------------------------------------------- images


def small_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 (N, 32, 32, 3) images and labels: CIFAR-10 from $RELSSL_CIFAR10 if set, else n random images."""
    root = os.environ.get("RELSSL_CIFAR10")
    if root:
        arrays = load_split("imagefolder", "train", root, image_size=SMALL, progress=False)
        return arrays.images, arrays.labels, f"{len(arrays)} real CIFAR-10 images from {root}"
    images = np.random.default_rng(seed).integers(0, 256, size=(n, SMALL, SMALL, 3), dtype=np.uint8)
    return images, np.zeros(n, dtype=np.int64), f"{n} random uint8 images (set RELSSL_CIFAR10 for real CIFAR-10)"


def _write_photo(job: tuple[str, int]) -> None:
    """One synthetic photo: smooth colour fields plus detail and grain (JPEG sizes near real photos')."""
    path, seed = job
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(PHOTO_SIDES[0], PHOTO_SIDES[1] + 1, size=2))

    def smooth_noise(cells_h: int, cells_w: int, resample: Image.Resampling) -> np.ndarray:
        """Random colours on a coarse grid, resized to the photo."""
        small = Image.fromarray(rng.integers(0, 256, (cells_h, cells_w, 3), dtype=np.uint8))
        return np.asarray(small.resize((w, h), resample), dtype=np.float32)

    pixels = (0.65 * smooth_noise(5, 5, Image.Resampling.BICUBIC)
              + 0.35 * smooth_noise(h // 12, w // 12, Image.Resampling.BILINEAR))
    pixels += rng.normal(0.0, 5.0, size=(h, w, 1))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_photos(root: Path, count: int, workers: int, seed: int = 0) -> None:
    """Write `count` JPEGs of 400-500 px under root/train/<class>/, in `workers` processes."""
    jobs = []
    for i in range(count):
        folder = root / "train" / f"class{i % PHOTO_CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((str(folder / f"{i:05d}.jpg"), seed * 1_000_003 + i))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_write_photo, jobs, chunksize=32))


# ---------------------------------------------------------------- the reference-style pipeline


def reference_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """The reference code's per-image view: torchvision v1 transforms on a PIL image."""
    return T.Compose(
        [
            T.RandomResizedCrop(size),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class ArrayViews(Dataset):
    """K views of one in-memory uint8 image per item, made one by one with PIL."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, k: int, transform: Callable) -> None:
        self.images, self.labels, self.k, self.transform = images, labels, k, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        image = Image.fromarray(self.images[i])
        return torch.stack([self.transform(image) for _ in range(self.k)]), int(self.labels[i]), i


class FileViews(Dataset):
    """K views of one image file per item: the file opened with PIL, then the views made one by one."""

    def __init__(self, files: list[str], labels: np.ndarray, k: int, transform: Callable) -> None:
        self.files, self.labels, self.k, self.transform = files, labels, k, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        with Image.open(self.files[i]) as file:
            image = file.convert("RGB")
        return torch.stack([self.transform(image) for _ in range(self.k)]), int(self.labels[i]), i


def reference_batches(dataset: Dataset, m: int, workers: int, device: torch.device, seed: int) -> Batches:
    """View-major float (K*M, 3, S, S) batches on `device` from a shuffling DataLoader over `dataset`."""
    loader = DataLoader(dataset, batch_size=m, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
    while True:  # epoch after epoch
        for views, labels, indices in loader:  # views (M, K, 3, S, S)
            views = views.to(device, non_blocking=True).transpose(0, 1).reshape(-1, *views.shape[2:])
            yield views, labels.to(device, non_blocking=True), indices.to(device, non_blocking=True)


# ---------------------------------------------------------------- relssl


def build_trainer(overrides: dict[str, Any], device: torch.device, aug: AugmentConfig, *,
                  images: np.ndarray | None = None, labels: np.ndarray | None = None,
                  stream: Callable[[int], StreamLoader] | None = None, num_images: int = 0) -> Trainer:
    """A relssl Trainer as `relssl train` builds one: config -> backbone -> method -> Trainer.

    `stream` makes the streaming reader for the method's number of views.
    """
    config = build_config({}, {**overrides, "train.device": str(device), "train.progress": False,
                               "eval.linear": False})
    method = build_method(config, build_backbone(config), num_images=num_images, num_classes=PHOTO_CLASSES)
    if stream is not None:
        return Trainer(config, method, None, None, aug, device, stream=stream(method.num_views))
    return Trainer(config, method, images, labels, aug, device)


def relssl_batches(trainer: Trainer, first_epoch: int) -> Batches:
    """The trainer's own batches, epoch after epoch (uint8 images, or uint8 crops when streaming)."""
    for epoch in itertools.count(first_epoch):
        yield from trainer.stream.iterate(epoch)


def ready_views(trainer: Trainer) -> Batch:
    """One batch of augmented float views on the device, made by relssl's own pipeline."""
    batches = relssl_batches(trainer, 0)
    images, labels, indices = next(batches)
    batches.close()
    with torch.no_grad():
        views = trainer.augment(images, trainer.k, generator=trainer.aug_generator, cropped=trainer.stream.cropped)
    return views, labels, indices


def same_batch(batch: Batch) -> Batches:
    """`batch` forever (the floor: nothing to fetch)."""
    while True:
        yield batch


class GivenViews(nn.Module):
    """Stands in for the trainer's ViewAugment when the batch already holds the float views."""

    def forward(self, views: torch.Tensor, k: int, generator: torch.Generator | None = None,
                cropped: bool = False) -> torch.Tensor:
        return views


@contextlib.contextmanager
def bypass_augmentation(trainer: Trainer) -> Iterator[None]:
    """Within the block `trainer._step` takes its batch as the views: its augmentation is bypassed."""
    augment = trainer.augment
    trainer.augment = GivenViews()  # type: ignore[assignment]
    try:
        yield
    finally:
        trainer.augment = augment


# ---------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseClock:
    """Seconds spent in each phase of relssl's step; `lap(phase)` closes the phase that ends now."""

    def __init__(self, device: torch.device, synchronize: bool) -> None:
        self.device, self.synchronize = device, synchronize
        self.steps: list[dict[str, float]] = []
        self._current: dict[str, float] | None = None
        self._last = 0.0

    def start(self) -> None:
        self._current = dict.fromkeys(PHASES, 0.0)
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        if self._current is None:  # not timing (a warm-up step)
            return
        if self.synchronize:
            sync(self.device)
        now = time.perf_counter()
        self._current[phase] += now - self._last
        self._last = now

    def finish(self) -> None:
        assert self._current is not None
        self.steps.append(self._current)
        self._current = None

    def mean(self) -> dict[str, float]:
        """Mean seconds per step of each phase over the timed steps."""
        return {phase: statistics.fmean(step[phase] for step in self.steps) for phase in PHASES}


@contextlib.contextmanager
def phase_hooks(trainer: Trainer, clock: PhaseClock) -> Iterator[None]:
    """Laps of `clock` inside `trainer._step`: the model's forward starts and ends, the optimiser step starts.

    The step is then: data (fetch) | augmentation (ViewAugment, memory format) | forward (method) |
    backward (zero_grad, backward) | optimiser (optimizer step, lr schedule, step hooks).
    """
    handles = [
        trainer.model.register_forward_pre_hook(lambda *_: clock.lap("augmentation")),
        trainer.model.register_forward_hook(lambda *_: clock.lap("forward")),
        trainer.optimizer.register_step_pre_hook(lambda *_: clock.lap("backward")),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_step(trainer: Trainer, batches: Batches, clock: PhaseClock | None) -> None:
    """One loop iteration of training: fetch the next batch, then the trainer's step."""
    if clock is not None:
        clock.start()
    batch = next(batches)
    if clock is not None:
        clock.lap("data")
    trainer._step(*batch)
    if clock is not None:
        clock.lap("optimiser")
        clock.finish()


@dataclass
class Pipeline:
    """One alternative of a case: where its batches come from, fresh for each measurement."""

    label: str
    batches: Callable[[int], Batches]  # round -> a new batch iterator (a new DataLoader, workers and all)
    views_given: bool  # the batches hold ready float views: the trainer's augmentation is bypassed


def measure(trainer: Trainer, pipeline: Pipeline, round_: int, steps: int, warmup: int,
            clock: PhaseClock | None) -> float:
    """Seconds per step over `steps` timed steps after `warmup` untimed ones, on a fresh pipeline."""
    device = trainer.device
    batches = pipeline.batches(round_)
    with contextlib.ExitStack() as stack:
        stack.callback(batches.close)  # ends the pipeline's DataLoader workers
        if pipeline.views_given:
            stack.enter_context(bypass_augmentation(trainer))
        if clock is not None:
            stack.enter_context(phase_hooks(trainer, clock))
        for _ in range(warmup):
            run_step(trainer, batches, None)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            run_step(trainer, batches, clock)
        sync(device)
        return (time.perf_counter() - start) / steps


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    """A model and data setting with its three alternatives."""

    name: str
    title: str
    trainer: Trainer
    views_per_step: int
    pipelines: dict[str, Pipeline]  # "relssl", "reference", "floor"
    steps: int
    warmup: int
    rounds: dict[str, list[float]] = field(default_factory=dict)  # seconds per step of each round
    seconds: dict[str, float] = field(default_factory=dict)  # median seconds per step
    phases: dict[str, float] = field(default_factory=dict)  # relssl's mean seconds per phase


def add_floor(pipelines: dict[str, Pipeline], trainer: Trainer) -> None:
    """The floor alternative: one ready batch of views on the device, stepped on again and again."""
    batch = ready_views(trainer)
    pipelines["floor"] = Pipeline(f"floor (model step on ready views on {trainer.device})",
                                  lambda _round: same_batch(batch), views_given=True)


def rr_case(name: str, backbone: str, args: argparse.Namespace, device: torch.device, images: np.ndarray,
            labels: np.ndarray) -> Case:
    """Relational Reasoning with `backbone` on the in-memory 32x32 images."""
    aug = AugmentConfig(size=SMALL, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    trainer = build_trainer({"method": "relational", "relational.k": args.k, "backbone.name": backbone,
                             "train.batch_size": args.m}, device, aug, images=images, labels=labels,
                            num_images=len(images))
    dataset = ArrayViews(images, labels, args.k, reference_transform(SMALL, CIFAR10_MEAN, CIFAR10_STD))
    pipelines = {
        "relssl": Pipeline("relssl (BatchStream in memory + ViewAugment)",
                           lambda r: relssl_batches(trainer, r), views_given=False),
        "reference": Pipeline(f"reference-style (PIL per image, DataLoader {args.workers} workers)",
                              lambda r: reference_batches(dataset, args.m, args.workers, device, r), views_given=True),
    }
    add_floor(pipelines, trainer)
    steps, warmup = case_steps(name, args, device)
    title = f"Relational Reasoning, {backbone}, K={args.k} views x M={args.m} images of {SMALL}x{SMALL} per step"
    return Case(name, title, trainer, args.k * args.m, pipelines, steps, warmup)


def simclr_case(args: argparse.Namespace, device: torch.device, listing: Listing) -> Case:
    """SimCLR with ResNet-18 on 224 px crops of full-size JPEGs, through the streaming reader."""
    aug = AugmentConfig(size=CROP, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def stream(views: int) -> StreamLoader:
        return StreamLoader(listing, CropSettings(size=CROP, views=views), args.simclr_batch, seed=0, device=device,
                            workers=args.workers)

    trainer = build_trainer({"method": "simclr", "backbone.name": "resnet18", "backbone.cifar_stem": False,
                             "train.batch_size": args.simclr_batch}, device, aug, stream=stream,
                            num_images=len(listing))
    dataset = FileViews(listing.files, listing.labels, trainer.k, reference_transform(CROP, IMAGENET_MEAN,
                                                                                      IMAGENET_STD))
    pipelines = {
        "relssl": Pipeline(f"relssl (StreamLoader {args.workers} workers + ViewAugment)",
                           lambda r: relssl_batches(trainer, r), views_given=False),
        "reference": Pipeline(f"reference-style (PIL per image, DataLoader {args.workers} workers)",
                              lambda r: reference_batches(dataset, args.simclr_batch, args.workers, device, r),
                              views_given=True),
    }
    add_floor(pipelines, trainer)
    steps, warmup = case_steps("simclr-resnet18-224", args, device)
    title = (f"SimCLR, resnet18 (torchvision stem), 2 views x batch {args.simclr_batch} of {CROP}x{CROP} crops of "
             f"{len(listing)} photos per step")
    return Case("simclr-resnet18-224", title, trainer, trainer.k * args.simclr_batch, pipelines, steps, warmup)


def default_steps(name: str, device: torch.device, workers: int) -> tuple[int, int]:
    """(timed steps, warm-up steps) of a case when the options leave them unset.

    A DataLoader with W workers makes W batches at once, one per worker, so the first W steps after
    it starts may be served by that first wave: where the data can be the bottleneck (every case on
    a GPU, Conv-4 on a CPU) at least W steps are warm-up and at least W are timed. Where the model
    step is far slower than the data (ResNet-32 with 2048 views, ~25 s, and ResNet-18 at 224 px,
    ~12 s, on a 2-core CPU) the workers keep the queue full beside the step, so one warm-up step
    and one timed step per round give a steady-state step, in a bearable time.
    """
    if device.type == "cpu" and name != "rr-conv4":
        return 1, 1
    steps, warmup = FAST_STEPS[device.type]
    return max(steps, workers), max(warmup, workers)


def case_steps(name: str, args: argparse.Namespace, device: torch.device) -> tuple[int, int]:
    """(timed steps, warm-up steps) per alternative per round: the options, else the case's defaults."""
    steps, warmup = default_steps(name, device, args.workers)
    return args.steps or steps, warmup if args.warmup is None else args.warmup


def run_case(case: Case, rounds: int) -> None:
    """Time the alternatives of `case`, alternating them, rotating their order each round."""
    trainer, device = case.trainer, case.trainer.device
    names = list(case.pipelines)
    times: dict[str, list[float]] = {name: [] for name in names}
    clock = PhaseClock(device, synchronize=False) if device.type == "cpu" else None
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(measure(trainer, case.pipelines[name], r, case.steps, case.warmup,
                                       clock if name == "relssl" else None))
    if clock is None:  # on a GPU: the phase split from its own, synchronised run
        clock = PhaseClock(device, synchronize=True)
        measure(trainer, case.pipelines["relssl"], rounds, case.steps, case.warmup, clock)
    case.rounds = times
    case.seconds = {name: statistics.median(t) for name, t in times.items()}
    case.phases = clock.mean()


def report_case(case: Case, rounds: int) -> None:
    """Print the step times of the alternatives and the split of relssl's step."""
    t = case.trainer
    precision = f"autocast {str(t.amp_dtype).removeprefix('torch.')}" if t.amp_dtype is not None else "float32"
    print(f"\n{case.name}: {case.title}")
    print(f"    {type(t.optimizer).__name__}, {precision}, channels_last {'on' if t.channels_last else 'off'}; "
          f"median of {rounds} rounds of {case.steps} timed steps after {case.warmup} warm-up, per alternative")
    for name, pipeline in case.pipelines.items():
        sec, spread = case.seconds[name], case.rounds[name]
        print(f"    {pipeline.label:58s} {sec * 1000:9.1f} ms/step {case.views_per_step / sec:8.0f} views/s"
              f"   (rounds {min(spread) * 1000:.0f}-{max(spread) * 1000:.0f} ms)")
    total = sum(case.phases.values())
    split = ", ".join(f"{phase} {case.phases[phase] * 1000:.1f} ms ({case.phases[phase] / total * 100:.0f}%)"
                      for phase in PHASES)
    how = "a synchronised run" if t.device.type == "cuda" else "wall time"
    print(f"    relssl step split ({how}, mean of the timed steps, {total * 1000:.1f} ms):\n        {split}")


# ---------------------------------------------------------------- main


def photo_listing(args: argparse.Namespace, needed: int, stack: contextlib.ExitStack) -> Listing:
    """The photos' listing: --photos DIR, or JPEGs generated once into a temporary folder (removed at exit)."""
    if args.photos:
        listing = load_listing("imagefolder", "train", args.photos)
        note = "" if len(listing) >= needed else f"; fewer than the {needed} one measurement reads, so epochs wrap"
        print(f"photos: {len(listing)} image files from {args.photos}{note}")
        return listing
    count = max(args.num_photos, needed)
    root = Path(tempfile.mkdtemp(prefix="relssl-photos-"))
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    start = time.perf_counter()
    make_photos(root, count, args.workers)
    more = f" (raised from {args.num_photos}: one measurement reads {needed})" if count > args.num_photos else ""
    print(f"photos: generated {count} JPEGs{more} of {PHOTO_SIDES[0]}-{PHOTO_SIDES[1]} px in {PHOTO_CLASSES} class "
          f"folders under {root}/train in {time.perf_counter() - start:.0f}s (removed at the end)")
    return load_listing("imagefolder", "train", str(root))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when present")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES, metavar="CASE",
                        help=f"cases to run (default all: {' '.join(CASES)})")
    parser.add_argument("--steps", type=int, help="timed steps per alternative per round (default: on a GPU "
                        "max(10, workers); on a CPU max(5, workers) for rr-conv4, 1 for the others)")
    parser.add_argument("--warmup", type=int, help="untimed steps before timing, per measurement (default: on a "
                        "GPU max(3, workers); on a CPU max(2, workers) for rr-conv4, 1 for the others)")
    parser.add_argument("--rounds", type=int, help="alternating rounds; medians are reported (default 3)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="DataLoader workers of both pipelines (default: the CPUs available)")
    parser.add_argument("--k", type=int, help="Relational Reasoning views per image, K (default 32)")
    parser.add_argument("--m", type=int, help="Relational Reasoning images per step, M (default 64)")
    parser.add_argument("--simclr-batch", type=int, help="SimCLR images per step (default 64 on a CPU, 512 on a GPU)")
    parser.add_argument("--photos", help="folder of JPEGs for SimCLR (train/<class>/ or <class>/ folders)")
    parser.add_argument("--num-photos", type=int, help="photos to generate without --photos (default 2000, raised "
                        "to the batches one measurement reads)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: K=4, M=16, SimCLR batch 16, 64 photos, 1 round of 1 step after 1 warm-up")
    return parser.parse_args()


def resolve_defaults(args: argparse.Namespace, device: torch.device) -> None:
    """Fill the options left unset: the full settings, or the small ones of --quick."""
    quick = args.quick
    defaults = {"k": 4 if quick else 32, "m": 16 if quick else 64, "rounds": 1 if quick else 3,
                "simclr_batch": 16 if quick else 512 if device.type == "cuda" else 64,
                "num_photos": 64 if quick else 2000, "steps": 1 if quick else None, "warmup": 1 if quick else None}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    resolve_defaults(args, device)
    print(machine_info(device))
    print(f"DataLoader workers {args.workers}; relssl {'CUDA' if device.type == 'cuda' else 'CPU'} step")
    makers: list[Callable[[], Case]] = []
    results: dict[str, dict[str, float]] = {}  # case -> median seconds per step of each alternative
    with contextlib.ExitStack() as stack:
        rr = [c for c in args.cases if c.startswith("rr-")]
        if rr:
            longest = max(sum(case_steps(c, args, device)) for c in rr)
            images, labels, source = small_images(max(1024, args.m * (longest + 1)))
            print(f"32x32 images: {source}")
            backbones = {"rr-conv4": "conv4", "rr-resnet32": "resnet32"}
            makers += [functools.partial(rr_case, c, backbones[c], args, device, images, labels) for c in rr]
        if "simclr-resnet18-224" in args.cases:
            needed = args.simclr_batch * sum(case_steps("simclr-resnet18-224", args, device))
            listing = photo_listing(args, needed, stack)
            makers.append(functools.partial(simclr_case, args, device, listing))
        for make in makers:  # one case at a time: its trainer and views are freed before the next is built
            case = make()
            run_case(case, args.rounds)
            report_case(case, args.rounds)
            results[case.name] = case.seconds
            del case
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (other processes on the machine distort CPU timings)")
    for name, sec in results.items():
        print(f"speedup {name}: {sec['reference'] / sec['relssl']:.2f}x")
    for name, sec in results.items():
        print(f"floor share {name}: {sec['relssl'] / sec['floor'] * 100:.0f}%")


if __name__ == "__main__":
    main()
