"""Reading back what a run wrote: its backbone (from the run directory, last.pt or backbone.safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from relssl.config import load_yaml
from relssl.errors import CheckpointError
from relssl.train.checkpoint import WEIGHT_KEYS, load_checkpoint
from relssl.train.config import build_config

__all__ = ["load_trained_backbone"]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a cut-short or foreign file is a one-line CheckpointError."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        detail = " ".join(str(err).split())[:200]
        raise CheckpointError(f"cannot read {path} ({type(err).__name__}: {detail}); the file is cut short or not "
                              f"safetensors: pass the run directory (its last.pt) instead, or export it again "
                              f"with: relssl train --resume {path.parent}") from None


def _load_weights(backbone: nn.Module, weights: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """Put `weights` into `backbone`; names or shapes that do not fit are a CheckpointError."""
    try:
        missing, unexpected = backbone.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a shape mismatch
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: weights do not fit {name} ({detail})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {name} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


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
        config = load_yaml(config_file)
        weights = _read_safetensors(path)
        tag = f"{path.stem}-{int(path.stat().st_mtime)}"
        normalization = None
    else:
        ckpt = load_checkpoint(path, require=WEIGHT_KEYS)  # evaluation needs no optimizer state
        config = ckpt["config"]
        weights = {k.removeprefix("backbone."): v for k, v in ckpt["method"].items() if k.startswith("backbone.")}
        state = ckpt.get("train_state")
        step = state.get("global_step") if isinstance(state, dict) else None
        tag = f"step{step}" if isinstance(step, int) else f"{path.stem}-{int(path.stat().st_mtime)}"
        normalization = ckpt.get("normalization")
    cfg = build_config(config, check_other_methods=False)
    backbone = cfg.backbone.build()
    _load_weights(backbone, weights, path, cfg.backbone.name)
    config = cfg.to_dict()
    if normalization:
        config["augment"]["mean"], config["augment"]["std"] = normalization["mean"], normalization["std"]
    return backbone, config, tag
