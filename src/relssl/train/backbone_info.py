"""What a user needs besides the weights to use a backbone: architecture, feature size, preprocessing.

`BackboneInfo` is written as string metadata (safetensors allows only strings, so lists and
sections are JSON) into a run's backbone.safetensors and into files from `relssl export --format
safetensors`, and read back by `relssl.load_backbone`. `run_backbone_info` and `run_preprocess`
describe a run's backbone; training and export both build the record through them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from relssl import __version__
from relssl.augment import AugmentConfig
from relssl.errors import CheckpointError, DataError
from relssl.models.backbone import feature_dim
from relssl.train.config import RunConfig
from relssl.train.inputs import TrainingInputs, eval_resize, open_training_inputs
from relssl.train.preprocess import Preprocess

__all__ = ["EXPORT_FORMAT", "BackboneInfo", "run_backbone_info", "run_preprocess"]

#: The `format` metadata entry of a safetensors file that describes its backbone: a run's
#: backbone.safetensors and a file written by `relssl export --format safetensors`.
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


def run_backbone_info(cfg: RunConfig, backbone: nn.Module, preprocess: Preprocess, source: Path | str) -> BackboneInfo:
    """The record of a run's trained `backbone`; `source` is its run directory."""
    return BackboneInfo(architecture=cfg.backbone.name, backbone=cfg.backbone.model_dump(mode="json"),
                        feature_dim=feature_dim(backbone), preprocess=preprocess, method=cfg.method,
                        source=str(Path(source).resolve()))


def run_preprocess(cfg: RunConfig, where: Path | str = "the run", *, inputs: TrainingInputs | None = None,
                   augment: AugmentConfig | None = None) -> Preprocess:
    """The evaluation preprocessing of a run, as its training and `relssl eval` applied it.

    The streaming path centre-crops `augment.size` (else `data.image_size`, else 224) after
    resizing the shorter side to `data.eval_resize`; the decoded path fits images to the size the
    training split was decoded at (`data.image_size`, else its native size) and resizes that to
    `augment.size` when set. Training passes its open `inputs` and measured `augment`; without
    them, native sizes and mean/std come from the training split, read as training read it
    (never downloaded).
    """
    aug, data = augment or cfg.augment, cfg.data
    known_size = data.stream is True or data.image_size is not None
    if inputs is None and (aug.mean is None or aug.std is None or not known_size):
        inputs = _training_inputs(cfg, where)
    streamed = data.stream is True if inputs is None else inputs.listing is not None
    if inputs is not None and (aug.mean is None or aug.std is None):
        aug = inputs.augment_config(cfg)
    mean, std = aug.normalization()
    if streamed:
        crop = aug.size or data.image_size or 224
        return Preprocess("crop", (crop, crop), mean, std, resize=eval_resize(cfg, crop))
    if data.image_size is not None:
        size = (data.image_size, data.image_size)
    else:
        assert inputs is not None and inputs.arrays is not None
        size = (int(inputs.arrays.images.shape[1]), int(inputs.arrays.images.shape[2]))
    return Preprocess("fit", size, mean, std, input_size=aug.size)


def _training_inputs(cfg: RunConfig, where: Path | str) -> TrainingInputs:
    """The run's training split (never downloaded); a CheckpointError saying why it is needed when unreadable."""
    offline = cfg.model_copy(update={"data": cfg.data.model_copy(update={"download": False})})
    try:
        return open_training_inputs(offline, progress=False)
    except DataError as err:
        raise CheckpointError(
            f"{where}: the image size or normalisation the backbone was trained with is not recorded, and its "
            f"training data ({cfg.data.dataset}) cannot be read to measure it ({err}). Make the data available, "
            "or export the backbone where it is (relssl export --format safetensors records both)") from None
