"""Typed, validated configuration of the view augmentation pipeline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["AugmentConfig"]


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


def _probability(name: str, value: Any) -> float:
    p = _real(name, value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment.{name} must be a probability in [0, 1], got {value!r}")
    return p


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the Relational Reasoning / SimCLR view distribution (torchvision semantics).

    Defaults are the reference implementation's CIFAR-10 pipeline: RandomResizedCrop,
    horizontal flip 0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale 0.2.
    ``size=None`` keeps the input's spatial size. Every invalid value raises a ValueError
    naming the field (``augment.<field>``).
    """

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
    mean: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
    # torchvision's ColorJitter draws a fresh op order per call, i.e. per view: "random" does
    # the same per view; "fixed" applies brightness, contrast, saturation, hue in that order
    # (cheaper on CPU: no regrouping of the views between ops).
    jitter_order: Literal["random", "fixed"] = "random"

    def __post_init__(self) -> None:
        # Normalise numbers to floats and sequences to tuples so the config stays hashable
        # and comparable, whatever a YAML loader handed us.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.size is not None:
            if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
                raise ValueError(f"augment.size must be a positive integer or None, got {self.size!r}")

        lo, hi = _reals("scale", self.scale, 2)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment.scale must satisfy 0 < lo <= hi <= 1, got {self.scale!r}")
        put("scale", (lo, hi))

        lo, hi = _reals("ratio", self.ratio, 2)
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment.ratio must satisfy 0 < lo <= hi, got {self.ratio!r}")
        put("ratio", (lo, hi))

        for name in ("flip_p", "jitter_p", "gray_p"):
            put(name, _probability(name, getattr(self, name)))

        for name in ("brightness", "contrast", "saturation"):
            value = _real(name, getattr(self, name))
            if value < 0.0:
                raise ValueError(f"augment.{name} must be >= 0, got {value!r}")
            put(name, value)

        hue = _real("hue", self.hue)
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5], got {self.hue!r}")
        put("hue", hue)

        put("mean", _reals("mean", self.mean, 3))
        std = _reals("std", self.std, 3)
        if min(std) <= 0.0:
            raise ValueError(f"augment.std must be three positive numbers, got {self.std!r}")
        put("std", std)

        if self.jitter_order not in ("random", "fixed"):
            raise ValueError(f"augment.jitter_order must be 'random' or 'fixed', got {self.jitter_order!r}")
