"""Feature-cache keys from what determines the features: the weights, the images and the transform.

A key is a readable prefix and split name plus a digest of the identity: a hash of the backbone's
weights, the split's identity (dataset, absolute root, split, image size, and a digest of its
labels and of a sample of its pixels, or of its file list when streamed) and the transform (mean,
std, resize). Another checkpoint, data root, split or normalisation gives another key, so cached
features are never reused for other data; the identity is stored beside the features and checked
again on reading.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

__all__ = ["SplitIdentity", "array_digest", "feature_identity", "feature_key", "weights_digest"]


class SplitIdentity(Protocol):
    """Evaluation data that can say what one of its splits holds."""

    def identity(self, name: str) -> dict[str, Any]: ...


def weights_digest(module: nn.Module) -> str:
    """BLAKE2b of every tensor of `module`'s state dict (names, dtypes, shapes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def array_digest(array: np.ndarray, sample_rows: int = 64) -> str:
    """BLAKE2b of an array's shape and dtype and of up to `sample_rows` evenly spaced rows (cheap on a memmap)."""
    digest = hashlib.blake2b(f"{array.dtype}:{array.shape}".encode(), digest_size=16)
    if len(array):
        rows = np.unique(np.linspace(0, len(array) - 1, min(sample_rows, len(array))).astype(np.int64))
        digest.update(np.ascontiguousarray(array[rows]).tobytes())
    return digest.hexdigest()


def feature_identity(backbone: nn.Module, data: SplitIdentity, split: str, *, mean: tuple[float, ...],
                     std: tuple[float, ...], size: int | None) -> dict[str, Any]:
    """Everything the features of `split` depend on, as JSON-able values."""
    return {"version": 1, "weights": weights_digest(backbone), "data": data.identity(split),
            "transform": {"mean": [round(m, 8) for m in mean], "std": [round(s, 8) for s in std], "size": size}}


def feature_key(prefix: str, split: str, identity: Mapping[str, Any]) -> str:
    """`<prefix>-<split>-<digest of identity>`: a file-name-safe cache key."""
    digest = hashlib.blake2b(json.dumps(identity, sort_keys=True, default=str).encode(), digest_size=10).hexdigest()
    safe = "".join(c if c.isalnum() or c in "._=+-" else "_" for c in prefix)[:120] or "features"
    return f"{safe}-{split}-{digest}"
