"""Vectorised sampling of per-view augmentation parameters from one generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import AugmentConfig

__all__ = ["ViewParams", "per_view", "sample_crop_boxes", "sample_view_params", "CROP_TRIES"]

# torchvision's RandomResizedCrop tries 10 (area, ratio) draws before falling back.
CROP_TRIES = 10


@dataclass(frozen=True)
class ViewParams:
    """Random parameters of N views, one row per view (view-major, N = k*B)."""

    boxes: Tensor  # (N, 4) float: top, left, height, width in source pixels
    flip: Tensor  # (N,) bool
    jitter: Tensor  # (N,) bool: colour jitter applied
    factors: Tensor  # (N, 4): brightness, contrast, saturation factors, hue shift
    order: Tensor  # (N, 4) long: each row a permutation of 0..3 (jitter op order)
    gray: Tensor  # (N,) bool
    blur: Tensor  # (N,) bool: Gaussian blur applied
    sigma: Tensor  # (N,) float: the blur's standard deviation in pixels
    solarize: Tensor  # (N,) bool

    def take(self, index: Tensor | slice) -> ViewParams:
        """The parameters of the views selected by ``index`` (rows), in that order."""
        fields = (self.boxes, self.flip, self.jitter, self.factors, self.order, self.gray, self.blur, self.sigma,
                  self.solarize)
        return ViewParams(*(t[index] for t in fields))


def sample_crop_boxes(
    u: Tensor, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Tensor:
    """RandomResizedCrop boxes from uniforms ``u`` (N, 2*CROP_TRIES + 2), exactly as torchvision draws them.

    All 10 tries are drawn at once and the first valid one is kept (same integer rounding and
    validity test as ``RandomResizedCrop.get_params``); rows with no valid try get torchvision's
    centre-crop fallback. The offset is uniform over valid integer positions. So the box
    distribution is torchvision's, not an approximation by clamping.
    """
    tries = CROP_TRIES
    u_area, u_ratio, u_pos = u[:, :tries], u[:, tries : 2 * tries], u[:, 2 * tries :]
    area = height * width
    target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # first valid try (0 if none)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = valid.any(dim=1)

    # torchvision's fallback: the largest centred box whose aspect ratio is within bounds.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fb_w, fb_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fb_w, fb_h = int(round(height * max(ratio))), height
    else:
        fb_w, fb_h = width, height
    w = torch.where(found, w, torch.full_like(w, fb_w))
    h = torch.where(found, h, torch.full_like(h, fb_h))
    # randint(0, H - h + 1) as floor(u * (H - h + 1)); min() guards u*n rounding up to n.
    top = torch.minimum(torch.floor(u_pos[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u_pos[:, 1] * (width - w + 1)), width - w)
    top = torch.where(found, top, torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - w, 2, rounding_mode="floor"))
    return torch.stack((top, left, h, w), dim=1)


def _jitter_order(config: AugmentConfig, u: Tensor) -> Tensor:
    """Per-view jitter op order: a uniform random permutation (argsort of 4 iid uniforms) or b, c, s, h."""
    if config.jitter_order == "random":
        return torch.argsort(u, dim=1)
    return torch.arange(4, device=u.device).expand(u.shape[0], 4)


def per_view(probs: tuple[float, ...], n: int, views: int, device: torch.device) -> Tensor:
    """(n,) probability of each row of ``views`` view-major blocks: view v gets ``probs[v % len(probs)]``."""
    view = torch.div(torch.arange(n, device=device) * views, n, rounding_mode="floor")  # = row // (n / views)
    return torch.tensor(probs, device=device)[view % len(probs)]


def _blur_solarize(
    config: AugmentConfig, n: int, views: int, device: torch.device, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Tensor]:
    """(blur, sigma, solarize) of ``n`` view-major rows; draws uniforms only if the config blurs or solarises.

    A recipe without blur and solarisation (paper1) thus consumes exactly the generator draws it
    did before these ops existed, and its views stay bit-identical.
    """
    if not (config.blurs or config.solarizes):
        off = torch.zeros(n, dtype=torch.bool, device=device)
        return off, torch.zeros(n, device=device), off
    rng_device = generator.device if generator is not None else device
    u = torch.rand(n, 3, generator=generator, device=rng_device).to(device)
    lo, hi = config.blur_sigma
    blur = u[:, 0] < per_view(config.blur_p, n, views, device)
    solarize = u[:, 2] < per_view(config.solarize_p, n, views, device)
    return blur, lo + (hi - lo) * u[:, 1], solarize


def sample_view_params(
    config: AugmentConfig,
    n: int,
    height: int,
    width: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    views: int = 1,
) -> ViewParams:
    """Draw the parameters of ``n`` views of (height, width) images: ``views`` view-major blocks of n / views rows.

    One ``torch.rand`` call for crop, flip, jitter and grayscale, and a second one for blur and
    solarisation only when the config uses them. Uniforms come from ``generator`` on its own
    device (or the global RNG of ``device``) and are then moved to ``device``, so a seed
    reproduces the views exactly on a given device.
    """
    crop_cols = 2 * CROP_TRIES + 2
    rng_device = generator.device if generator is not None else device
    u = torch.rand(n, crop_cols + 11, generator=generator, device=rng_device).to(device)
    rest = u[:, crop_cols:]  # flip, jitter, 4 jitter factors, 4 order keys, gray

    b, c, s, hue = config.brightness, config.contrast, config.saturation, config.hue
    lo = torch.tensor((max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -hue), device=device)
    hi = torch.tensor((1 + b, 1 + c, 1 + s, hue), device=device)
    boxes = sample_crop_boxes(u[:, :crop_cols], height, width, config.scale, config.ratio)
    blur, sigma, solarize = _blur_solarize(config, n, views, device, generator)
    return ViewParams(
        boxes=boxes,
        flip=rest[:, 0] < config.flip_p,
        jitter=rest[:, 1] < config.jitter_p,
        factors=lo + (hi - lo) * rest[:, 2:6],
        order=_jitter_order(config, rest[:, 6:10]),
        gray=rest[:, 10] < config.gray_p,
        blur=blur,
        sigma=sigma,
        solarize=solarize,
    )
