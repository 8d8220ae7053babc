"""Run set-up helpers: seeding, the run directory and the files written into it."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from relssl.train.config import RunConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write a JSON file atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
