"""Typed, validated configuration of the view augmentation pipeline (the `augment` config section)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ConfigDict, field_validator, model_validator

from relssl.config import Section

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "RECIPES", "AugmentConfig"]

# The Relational Reasoning reference code's CIFAR-10 statistics: the normalisation a ViewAugment
# uses when its config leaves mean/std unset (a `relssl train` run measures them instead).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# Named view distributions (`augment.recipe`): the values a recipe gives the fields a config leaves
# unset. paper1 is the field defaults (Relational Reasoning's CIFAR pipeline). byol is BYOL's Table 6
# (Grill et al. 2020), which paper 2 uses for RCL: jitter strengths 0.4/0.4/0.2/0.1 and the
# asymmetric blur / solarisation probabilities of its two views (crop, flip, jitter_p and gray_p as
# paper1's).
RECIPES: dict[str, dict[str, Any]] = {
    "paper1": {},
    "byol": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1,
             "blur_p": (1.0, 0.1), "solarize_p": (0.0, 0.2)},
}


def _real(name: str, value: Any) -> float:
    """Return ``value`` as a finite float or raise a ValueError naming ``augment.<name>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"augment.{name} must be a finite number, got {value!r}")
    return float(value)


def _probability(name: str, value: Any) -> float:
    """Return ``value`` as a probability in [0, 1] or raise a ValueError naming ``augment.<name>``."""
    p = _real(name, value)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment.{name} must be a probability in [0, 1], got {value!r}")
    return p


def _reals(name: str, value: Any, n: int) -> tuple[float, ...]:
    """Return ``value`` as a tuple of ``n`` finite floats (lists from YAML are accepted)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(f"augment.{name} must be a sequence of {n} numbers, got {value!r}")
    return tuple(_real(name, v) for v in value)


class AugmentConfig(Section):
    """Parameters of the view distribution (torchvision semantics), starting from a named recipe.

    ``recipe="paper1"`` (the default) is the Relational Reasoning reference code's CIFAR-10
    pipeline: RandomResizedCrop, horizontal flip 0.5, colour jitter (0.8, 0.8, 0.8, 0.2) with
    p=0.8, grayscale 0.2, no blur, no solarisation. ``recipe="byol"`` is BYOL's (``RECIPES``); a
    field given explicitly overrides its recipe's value. ``blur_p`` and ``solarize_p`` hold one
    probability per view, cycled over the K views (view v uses entry v mod len). ``size=None``
    keeps the input's spatial size. ``mean``/``std`` None: `relssl train` measures them on the
    training split; a ViewAugment used directly falls back to CIFAR-10's. Every invalid value
    raises a ValueError naming the field (``augment.<field>``).
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
    recipe: Literal["paper1", "byol"] = "paper1"
    # Gaussian blur (after grayscale) and solarisation (after blur), per view; see ops.gaussian_blur_.
    blur_p: tuple[float, ...] = (0.0,)
    solarize_p: tuple[float, ...] = (0.0,)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1  # kernel side / view side, rounded to the nearest odd size >= 3

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """Fill the fields a mapping leaves unset with its recipe's values."""
        if not isinstance(data, dict):
            return data
        recipe = data.get("recipe", "paper1")
        if not isinstance(recipe, str) or recipe not in RECIPES:
            raise ValueError(f"augment.recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        return {**RECIPES[recipe], **data}

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
        return _probability(info.field_name, value)

    @field_validator("blur_p", "solarize_p", mode="before")
    @classmethod
    def _per_view(cls, value: Any, info: Any) -> tuple[float, ...]:
        name = info.field_name
        if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
            if not value:
                raise ValueError(f"augment.{name} must hold at least one probability (one per view), got {value!r}")
            return tuple(_probability(name, v) for v in value)
        return (_probability(name, value),)  # one number: every view

    @field_validator("blur_sigma", mode="before")
    @classmethod
    def _sigma(cls, value: Any) -> tuple[float, ...]:
        lo, hi = _reals("blur_sigma", value, 2)
        if not 0.0 < lo <= hi:
            raise ValueError(f"augment.blur_sigma must satisfy 0 < lo <= hi (pixels), got {value!r}")
        return lo, hi

    @field_validator("blur_kernel_fraction", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> float:
        f = _real("blur_kernel_fraction", value)
        if not 0.0 < f <= 1.0:
            raise ValueError(f"augment.blur_kernel_fraction must be in (0, 1], got {value!r}")
        return f

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

    @property
    def blurs(self) -> bool:
        """Whether any view may be blurred."""
        return max(self.blur_p) > 0.0

    @property
    def solarizes(self) -> bool:
        """Whether any view may be solarised."""
        return max(self.solarize_p) > 0.0

    def check_views(self, k: int) -> None:
        """Raise a ValueError if a per-view list given explicitly has more entries than the ``k`` views.

        A recipe's own lists are exempt: with one view (RotNet, DIM, supervised) only their first
        entry applies, which is the recipe's view 1.
        """
        for name in ("blur_p", "solarize_p"):
            probs = getattr(self, name)
            if len(probs) > k and probs != tuple(RECIPES[self.recipe].get(name, ())):
                raise ValueError(f"augment.{name} has {len(probs)} entries but the method makes {k} view(s) per "
                                 f"image; give at most {k} (entry v applies to views v, v + {len(probs)}, ...)")

    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) the views are normalised with: the configured ones, else CIFAR-10's."""
        return self.mean or CIFAR10_MEAN, self.std or CIFAR10_STD
