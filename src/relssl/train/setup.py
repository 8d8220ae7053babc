"""Run set-up helpers: device, seeding, run directory, normalisation statistics."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from relssl.config import RunConfig


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA when available, else CPU; anything else is passed to torch.device."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={spec!r} but no CUDA device is available; use --set train.device=cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def channel_stats(images: np.ndarray, max_images: int = 10_000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (0-1 scale) of uint8 NHWC images, from a seeded subset."""
    n = len(images)
    if n > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
        images = images[idx]
    x = np.asarray(images, dtype=np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    std = np.where(std < 1e-3, 1.0, std)  # a constant channel would divide by ~0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def create_run_dir(config: RunConfig) -> Path:
    """Make a fresh run directory under train.runs_dir and record the config there."""
    name = config.train.run_name or "{}-{}-{}-{}".format(
        time.strftime("%Y%m%d-%H%M%S"), config.method, config.data.dataset, config.backbone.name
    )
    root = Path(config.train.runs_dir)
    run_dir = root / name
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = root / f"{name}-{suffix}"
    run_dir.mkdir(parents=True)
    write_config(config, run_dir)
    return run_dir


def write_config(config: RunConfig, run_dir: Path) -> None:
    """Write the resolved config as YAML beside the run's outputs."""
    with (run_dir / "config.yaml").open("w") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)


def write_json(data: dict, path: Path) -> None:
    """Write a JSON file atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
