"""Typed, validated configuration of the view augmentation pipeline (the `augment` config section)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ConfigDict, field_validator

from relssl.config import Section

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "AugmentConfig"]

# The Relational Reasoning reference code's CIFAR-10 statistics: the normalisation a ViewAugment
# uses when its config leaves mean/std unset (a `relssl train` run measures them instead).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _real(name: str, value: Any) -> float:
    """Return ``value`` as a finite float or raise a ValueError naming ``augment.<name>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"augment.{name} must be a finite number, got {value!r}")
    return float(value)


def _reals(name: str, value: Any, n: int) -> tuple[float, ...]:
    """Return ``value`` as a tuple of ``n`` finite floats (lists from YAML are accepted)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(f"augment.{name} must be a sequence of {n} numbers, got {value!r}")
    return tuple(_real(name, v) for v in value)


class AugmentConfig(Section):
    """Parameters of the Relational Reasoning / SimCLR view distribution (torchvision semantics).

    Defaults are the reference implementation's CIFAR-10 pipeline: RandomResizedCrop,
    horizontal flip 0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale 0.2.
    ``size=None`` keeps the input's spatial size. ``mean``/``std`` None: `relssl train` measures
    them on the training split; a ViewAugment used directly falls back to CIFAR-10's. Every
    invalid value raises a ValueError naming the field (``augment.<field>``).
    """

    model_config = ConfigDict(frozen=True)

    size: int | None = None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    gray_p: float = 0.2
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # torchvision's ColorJitter draws a fresh op order per call, i.e. per view: "random" does
    # the same per view; "fixed" applies brightness, contrast, saturation, hue in that order
    # (cheaper on CPU: no regrouping of the views between ops).
    jitter_order: Literal["random", "fixed"] = "random"

    # Checks run before pydantic's own parsing, so every message names `augment.<field>`.
    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"augment.size must be a positive integer or None, got {value!r}")
        return value

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, value: Any) -> tuple[float, ...]:
        lo, hi = _reals("scale", value, 2)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.scale must satisfy 0 < lo <= hi <= 1, got {value!r}")
        return lo, hi

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio(cls, value: Any) -> tuple[float, ...]:
        lo, hi = _reals("ratio", value, 2)
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment.ratio must satisfy 0 < lo <= hi, got {value!r}")
        return lo, hi

    @field_validator("flip_p", "jitter_p", "gray_p", mode="before")
    @classmethod
    def _probability(cls, value: Any, info: Any) -> float:
        p = _real(info.field_name, value)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{info.field_name} must be a probability in [0, 1], got {value!r}")
        return p

    @field_validator("brightness", "contrast", "saturation", mode="before")
    @classmethod
    def _strength(cls, value: Any, info: Any) -> float:
        x = _real(info.field_name, value)
        if x < 0.0:
            raise ValueError(f"augment.{info.field_name} must be >= 0, got {value!r}")
        return x

    @field_validator("hue", mode="before")
    @classmethod
    def _hue(cls, value: Any) -> float:
        hue = _real("hue", value)
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {value!r}")
        return hue

    @field_validator("mean", mode="before")
    @classmethod
    def _mean(cls, value: Any) -> Any:
        return None if value is None else _reals("mean", value, 3)

    @field_validator("std", mode="before")
    @classmethod
    def _std(cls, value: Any) -> Any:
        if value is None:
            return None
        std = _reals("std", value, 3)
        if min(std) <= 0.0:
            raise ValueError(f"augment.std must be three positive numbers, got {value!r}")
        return std

    @field_validator("jitter_order", mode="before")
    @classmethod
    def _order(cls, value: Any) -> Any:
        if value not in ("random", "fixed"):
            raise ValueError(f"augment.jitter_order must be 'random' or 'fixed', got {value!r}")
        return value

    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) the views are normalised with: the configured ones, else CIFAR-10's."""
        return self.mean or CIFAR10_MEAN, self.std or CIFAR10_STD
