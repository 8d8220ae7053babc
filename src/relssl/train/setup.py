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

from relssl.errors import ConfigError
from relssl.train.checkpoint import write_text
from relssl.train.config import RunConfig


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_run_dir(config: RunConfig) -> Path:
    """Make a fresh, empty run directory under train.runs_dir (`NAME-2`, `NAME-3`, ... when NAME is taken).

    The directory is created exclusively, so two runs started at once never share one. A runs
    folder that cannot be created or written is a ConfigError naming it.
    """
    name = config.train.run_name or "{}-{}-{}-{}".format(
        time.strftime("%Y%m%d-%H%M%S"), config.method, config.data.dataset,
        config.backbone.name.replace(":", "-"),  # timm:resnet18 -> timm-resnet18 (scp and rsync read ':' as a host)
    )
    root = Path(config.train.runs_dir)
    try:
        (root / name).parent.mkdir(parents=True, exist_ok=True)  # a run name may hold folders
        for suffix in range(1, 10_000):
            run_dir = root / (name if suffix == 1 else f"{name}-{suffix}")
            try:
                run_dir.mkdir()
                return run_dir
            except FileExistsError:
                continue
    except OSError as err:
        raise ConfigError(f"train.runs_dir {root}: cannot create a run directory there ({err.strerror or err}); "
                          "pass a writable folder with --runs-dir DIR") from None
    raise ConfigError(f"train.runs_dir {root}: every name {name}-N is taken; pass another --run-name")


def write_config(config: RunConfig, run_dir: Path) -> None:
    """Write the resolved config as YAML beside the run's outputs (atomically)."""
    write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))


def write_json(data: dict[str, Any], path: Path) -> None:
    """Write a JSON file atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
