"""Atomic checkpoint writes and safe loads (no arbitrary unpickling)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from relssl.errors import CheckpointError

__all__ = ["CheckpointError", "load_checkpoint", "save_backbone_safetensors", "save_checkpoint"]


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save a dict of tensors and plain values; readable with `torch.load(weights_only=True)`."""
    path = Path(path)
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True`, so a hostile file cannot run code."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a .pt file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file or one holding arbitrary objects
        detail = (str(err).splitlines() or ["no details"])[0]  # an empty file raises with an empty message
        raise CheckpointError(f"cannot load checkpoint {path} safely ({type(err).__name__}: {detail})") from None


def save_backbone_safetensors(backbone: torch.nn.Module, path: str | Path) -> Path:
    """Export backbone weights alone as safetensors, loadable in plain PyTorch."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(tensors, tmp))
    return path
