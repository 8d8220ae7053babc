"""What a user needs besides the weights to use a backbone: architecture, feature size, preprocessing.

`BackboneInfo` is written into an exported safetensors file as string metadata (safetensors
allows only strings, so lists and sections are JSON) and read back from it by `load_backbone`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relssl import __version__
from relssl.errors import CheckpointError
from relssl.export.preprocess import Preprocess

__all__ = ["EXPORT_FORMAT", "BackboneInfo"]

#: The `format` metadata entry of a safetensors file written by `relssl export --format safetensors`.
EXPORT_FORMAT = "relssl-backbone-v1"


@dataclass(frozen=True)
class BackboneInfo:
    """A trained backbone's description: its config section, feature size, preprocessing and origin."""

    architecture: str  # the registered backbone name, e.g. "resnet18"
    backbone: dict[str, Any]  # the whole `backbone` config section (name, cifar_stem, options, ...)
    feature_dim: int
    preprocess: Preprocess
    method: str | None = None  # the pretraining method, e.g. "relational"
    source: str = ""  # the run directory or file the weights came from
    relssl_version: str = __version__

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean the inputs are normalised with (pixel values in [0, 1])."""
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation the inputs are normalised with."""
        return self.preprocess.std

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images the backbone was evaluated on."""
        return self.preprocess.image_size

    def to_metadata(self) -> dict[str, str]:
        """Safetensors metadata: every value a string."""
        return {
            "format": EXPORT_FORMAT,
            "architecture": self.architecture,
            "backbone": json.dumps(self.backbone, sort_keys=True),
            "feature_dim": str(self.feature_dim),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "image_size": json.dumps(list(self.image_size)),
            "preprocess": json.dumps(self.preprocess.to_dict(), sort_keys=True),
            "method": self.method or "",
            "relssl_version": self.relssl_version,
            "source": self.source,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, str], where: str) -> BackboneInfo:
        """The record `to_metadata` wrote; a CheckpointError naming `where` when entries are missing or bad."""
        try:
            backbone = json.loads(meta["backbone"])
            return cls(architecture=meta["architecture"], backbone=backbone, feature_dim=int(meta["feature_dim"]),
                       preprocess=Preprocess.from_dict(json.loads(meta["preprocess"]), where),
                       method=meta.get("method") or None, source=meta.get("source", ""),
                       relssl_version=meta.get("relssl_version", "unknown"))
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{where}: its relssl metadata is incomplete or malformed ({type(err).__name__}: "
                                  f"{err}); export it again with: relssl export --format safetensors") from None
