"""Frozen-backbone feature extraction: uint8 images in, one float32 feature row per image out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from relssl.progress import Progress

__all__ = ["extract_features"]


def _resolve(device: torch.device) -> torch.device:
    """Give a bare ``cuda`` device its current index so that it compares equal to ``cuda:0``."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _check_backbone_device(backbone: nn.Module, device: torch.device) -> None:
    for tensor in [*backbone.parameters(), *backbone.buffers()]:
        if _resolve(tensor.device) != _resolve(device):
            raise ValueError(
                f"backbone is on {tensor.device} but extract_features was asked to run on {device}; "
                f"move it first with backbone.to({str(device)!r})"
            )
        return  # one tensor is enough: a module split across devices is the caller's business


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Embed uint8 ``(N, H, W, C)`` images (a NumPy memmap is fine) with ``backbone`` in eval mode.

    ``normalize`` maps a uint8 batch already on ``device`` to the float input the backbone expects
    (e.g. ``functools.partial(to_normalized, mean=..., std=...)``); no augmentation is applied.
    Returns float32 ``(N, feature_dim)`` on the CPU; the backbone's train/eval mode of every
    submodule is restored afterwards, even if the forward pass raises.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise TypeError(f"images must be a NumPy array or a torch.Tensor, got {type(images).__name__}")
    is_uint8 = images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)
    if images.ndim != 4 or not is_uint8:
        raise ValueError(f"images must be uint8 with shape (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    n = int(images.shape[0])
    if n == 0:
        raise ValueError("images is empty: there is nothing to extract features from")
    device = torch.device(device)
    _check_backbone_device(backbone, device)

    modes = {module: module.training for module in backbone.modules()}
    backbone.eval()
    try:
        out: torch.Tensor | None = None
        shown = Progress(n, desc, "img", show=progress)
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            if isinstance(chunk, np.ndarray):
                chunk = torch.from_numpy(np.array(chunk, dtype=np.uint8))  # copy: reads only this slice of a memmap
            x = normalize(chunk.to(device, non_blocking=True))
            features = backbone(x)
            if not isinstance(features, torch.Tensor) or features.ndim < 2 or features.shape[0] != x.shape[0]:
                got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
                raise ValueError(f"backbone must return a (B, feature_dim) tensor, got {got}")
            features = features.flatten(1)
            if out is None:
                out = torch.empty(n, features.shape[1], dtype=torch.float32)
            out[start : start + features.shape[0]].copy_(features)
            shown.update(features.shape[0])
        shown.close()
        assert out is not None
        return out
    finally:
        for module, training in modes.items():
            module.training = training
