"""The evaluation preprocessing of a trained backbone, as one record that travels with its weights.

relssl evaluates a backbone in one of two ways, and embedding a folder must do the same:

* ``fit`` (the decoded-cache path): each image is resized on its shorter side (bilinear,
  antialiased) and centre-cropped to the size the run's images were decoded at
  (`relssl.data.decode.decode_image`), then resized to ``input_size`` (when set and different,
  as `relssl.augment.to_normalized` does) and normalised;
* ``crop`` (the streaming path): each image is resized on its shorter side to ``resize`` and
  centre-cropped to ``size`` (`relssl.data.stream.eval_image`), then normalised.

Both read images as 8-bit RGB exactly as training did (`relssl.data.decode.to_rgb`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from relssl.augment import to_normalized
from relssl.data.decode import decode_image
from relssl.data.stream import decode_rgb, eval_image
from relssl.errors import CheckpointError, DataError

__all__ = ["Preprocess"]

Mode = Literal["fit", "crop"]


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the backbone's float input: resize rule, sizes and normalisation.

    ``size`` is the (height, width) each image is brought to on the CPU; ``resize`` the shorter
    side before the centre crop (``crop`` mode only); ``input_size`` the side the uint8 batch is
    resized to on the device (``fit`` mode, None: none); ``mean``/``std`` per channel in [0, 1] units.
    """

    mode: Mode
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    input_size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("fit", "crop"):
            raise ValueError(f"preprocess mode must be 'fit' or 'crop', got {self.mode!r}")
        if self.mode == "crop" and (self.resize is None or self.size[0] != self.size[1]):
            raise ValueError("preprocess mode 'crop' needs a square size and a resize side")

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images the backbone sees."""
        return (self.input_size, self.input_size) if self.input_size else self.size

    def image(self, path: str | Path) -> np.ndarray:
        """uint8 (H, W, 3) of one image file; a DataError naming the file when it cannot be read."""
        if self.mode == "fit":
            return decode_image(path, self.size)
        assert self.resize is not None
        try:
            return eval_image(decode_rgb(str(path)), self.size[0], self.resize)
        except DataError:
            raise
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
            raise DataError(f"cannot read image {path}: {err}. Remove or replace this file.") from err

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) images (already on the device) -> the normalised float (B, 3, H', W') input."""
        size = self.input_size if self.mode == "fit" else None
        return to_normalized(images, mean=self.mean, std=self.std, size=size)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON- and YAML-friendly)."""
        return {"mode": self.mode, "size": list(self.size), "resize": self.resize, "input_size": self.input_size,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "preprocess") -> Preprocess:
        """The record `to_dict` wrote; a CheckpointError naming `where` when it is malformed."""
        try:
            return cls(mode=values["mode"], size=_pair(values["size"]), mean=_floats(values["mean"]),
                       std=_floats(values["std"]), resize=values.get("resize"), input_size=values.get("input_size"))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{where}: malformed preprocessing record ({type(err).__name__}: {err})") from None


def _pair(values: Sequence[Any]) -> tuple[int, int]:
    height, width = (int(v) for v in values)
    return height, width


def _floats(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)
