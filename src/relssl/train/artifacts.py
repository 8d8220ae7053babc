"""Reading back what a run wrote: its backbone (from the run directory, last.pt or backbone.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file
from torch import nn

from relssl.errors import CheckpointError
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import build_config

__all__ = ["load_trained_backbone"]


def load_trained_backbone(path: str | Path) -> tuple[nn.Module, dict[str, Any], str]:
    """Backbone with trained weights, the run's config dict, and a cache tag naming the weights.

    `path` is a run directory, a training checkpoint (.pt), or a backbone.safetensors whose
    run directory holds config.yaml. Nothing is unpickled. The config dict's `augment` section
    carries the normalisation the backbone was trained with when the checkpoint records it.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        config_file = path.parent / "config.yaml"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: no config.yaml beside it to tell which backbone it holds")
        config = yaml.safe_load(config_file.read_text())
        weights = load_file(path)
        tag = f"{path.stem}-{int(path.stat().st_mtime)}"
        normalization = None
    else:
        ckpt = load_checkpoint(path)
        config = ckpt["config"]
        weights = {k.removeprefix("backbone."): v for k, v in ckpt["method"].items() if k.startswith("backbone.")}
        tag = f"step{ckpt['train_state']['global_step']}"
        normalization = ckpt.get("normalization")
    cfg = build_config(config, check_other_methods=False)
    backbone = cfg.backbone.build()
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {cfg.backbone.name} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    config = cfg.to_dict()
    if normalization:
        config["augment"]["mean"], config["augment"]["std"] = normalization["mean"], normalization["std"]
    return backbone, config, tag
