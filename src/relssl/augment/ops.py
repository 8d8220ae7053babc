"""Batched functional image ops with per-sample parameters (no per-image Python).

Every op takes float images ``x`` of shape (N, 3, H, W) in [0, 1] and per-sample
parameters as tensors of shape (N,), so one call transforms a whole batch of views
on whatever device ``x`` lives on. The colour ops reproduce torchvision's tensor
``adjust_*`` functionals (same grayscale weights, same HSV round trip, same clamping).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "as_float_nchw",
    "crop_resize_flip",
    "rgb_to_gray",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "color_jitter",
    "color_jitter_grouped_",
    "random_grayscale",
    "random_grayscale_",
    "brightness_",
    "contrast_",
    "saturation_",
    "hue_",
    "blur_kernel_size",
    "gaussian_kernels",
    "gaussian_blur",
    "gaussian_blur_",
    "solarize",
    "solarize_",
    "normalize",
    "normalize_",
    "JITTER_OPS",
]

# ITU-R 601-2 luma weights, as in torchvision's rgb_to_grayscale.
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def as_float_nchw(images: Tensor) -> Tensor:
    """Convert uint8 (B, H, W, 3) or (B, 3, H, W) images to float (B, 3, H, W) in [0, 1].

    A last dimension of 3 means channels-last (the on-disk layout) and wins if both
    dimension 1 and the last dimension are 3. Float input is taken to be in [0, 1] already.
    The result is always a new contiguous tensor, so callers may modify it in place.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D (B, H, W, 3) or (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[-1] == 3:
        images = images.permute(0, 3, 1, 2)
    elif images.shape[1] != 3:
        raise ValueError(f"images must have 3 channels first or last, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        # contiguous() first: the float copy is then NCHW-contiguous, which grid_sample prefers.
        return images.contiguous().float().div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    raise ValueError(f"images must be uint8 (or float in [0, 1]), got dtype {images.dtype}")


def crop_resize_flip(x: Tensor, source: Tensor, boxes: Tensor, flip: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Crop box n out of image ``x[source[n]]``, resize it bilinearly to ``out_hw`` and mirror it if ``flip[n]``.

    ``x`` is (B, 3, H, W); ``source`` (N,) long, ``boxes`` (N, 4) float (top, left, height, width)
    in pixels, ``flip`` (N,) bool. One ``grid_sample`` call for all N: the sampling points are the
    output pixel centres mapped into the box (align_corners=False), i.e. the coordinates
    ``F.interpolate(crop, mode="bilinear")`` uses, and ``padding_mode="border"`` matches its
    clamping at the image border. Differences from torchvision's crop-then-resize: inside the
    image, the outermost samples of an upscaled crop blend in up to half a source pixel from
    just outside the box instead of clamping to the box, and downscaling is not antialiased.
    """
    _, _, height, width = x.shape
    out_h, out_w = out_hw
    n = boxes.shape[0]
    top, left, box_h, box_w = boxes.to(x.dtype).unbind(1)
    # Output pixel centres in [-1, 1] (align_corners=False convention).
    ys = (torch.arange(out_h, device=x.device, dtype=x.dtype) * 2 + 1) / out_h - 1
    xs = (torch.arange(out_w, device=x.device, dtype=x.dtype) * 2 + 1) / out_w - 1
    # Output -> input normalised coordinates: box centre + half-extent * u (negated when flipped).
    gy = (box_h / height)[:, None] * ys + ((2 * top + box_h) / height - 1)[:, None]
    gx = (torch.where(flip, -box_w, box_w) / width)[:, None] * xs + ((2 * left + box_w) / width - 1)[:, None]
    grid = torch.stack(
        (gx.view(n, 1, out_w).expand(n, out_h, out_w), gy.view(n, out_h, 1).expand(n, out_h, out_w)), dim=-1
    )
    return F.grid_sample(x.index_select(0, source), grid, mode="bilinear", padding_mode="border", align_corners=False)


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma of (N, 3, H, W) images as (N, 1, H, W), torchvision's weights."""
    r, g, b = x.unbind(1)
    wr, wg, wb = _GRAY_WEIGHTS
    return (r * wr).add_(g, alpha=wg).add_(b, alpha=wb).unsqueeze(1)


# The in-place ops below are what the pipeline runs (on CPU every avoided allocation and pass
# counts); the public out-of-place wrappers further down are for reuse and for tests.


def _blend_(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """In place ``clamp(factor * x + (1 - factor) * other, 0, 1)`` for a luma image ``other`` (N, 1, H, W)."""
    f = factor.view(-1, 1, 1, 1)
    return torch.addcmul(other.mul_(1 - f), x, f, out=x).clamp_(0.0, 1.0)


def brightness_(x: Tensor, factor: Tensor) -> Tensor:
    """In-place torchvision ``adjust_brightness`` with per-sample factors."""
    return x.mul_(factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """In-place torchvision ``adjust_contrast``: blend each image with its mean luma."""
    # mean(luma(x)) == luma(per-channel means): one reduction instead of a luma image.
    weights = torch.tensor(_GRAY_WEIGHTS, device=x.device, dtype=x.dtype)
    mean = (x.mean(dim=(2, 3)) @ weights).view(-1, 1, 1, 1)
    f = factor.view(-1, 1, 1, 1)
    return x.mul_(f).add_(mean * (1 - f)).clamp_(0.0, 1.0)


def saturation_(x: Tensor, factor: Tensor) -> Tensor:
    """In-place torchvision ``adjust_saturation``: blend each image with its luma image."""
    return _blend_(x, rgb_to_gray(x), factor)


# hue_ helpers: per channel (R, G, B), X = clamp(alpha * |t - a| + beta, 0, 1) is the standard
# closed form of HSV->RGB for t = 6h in [0, 6] (R: |t-3|-1, G: 2-|t-2|, B: 2-|t-4|).
_HUE_A = (3.0, 2.0, 4.0)
_HUE_ALPHA = (1.0, -1.0, -1.0)
_HUE_BETA = (-1.0, 2.0, 2.0)


def hue_(x: Tensor, shift: Tensor) -> Tensor:
    """In-place torchvision ``adjust_hue`` (to float rounding) with per-sample shifts in [-0.5, 0.5].

    torchvision goes RGB -> HSV -> shift -> RGB through a six-sector table. Here the round trip
    is folded into arithmetic: with v = max, m = min, c = v - m and t = 6*hue (torchvision's
    ``_rgb2hsv`` sector formulas and tie-breaking) plus 6*shift, wrapped to [0, 6), each output
    channel is ``m + c * clamp(alpha * |t - a| + beta, 0, 1)``, the closed form of that table.
    Branch masks are float multiplies, not ``torch.where``: about half the memory passes.
    """
    r, g, b = x.unbind(1)
    v = x.amax(dim=1)
    m = x.amin(dim=1)
    c = v - m
    # Which formula applies: max is R, else max is G, else B (torchvision's precedence).
    is_r = (v == r).to(x.dtype)
    is_g = (v == g).to(x.dtype).mul_(1.0 - is_r)
    is_b = (1.0 - is_r).sub_(is_g)
    num = (g - b).mul_(is_r)
    num.addcmul_((b - r).add_(c, alpha=2.0), is_g).addcmul_((r - g).add_(c, alpha=4.0), is_b)
    # Grey pixels (c == 0) have num == 0 and get m + 0 * X == v: any divisor works there.
    t = num.div_(c.masked_fill(c == 0, 1.0)).add_(shift.view(-1, 1, 1), alpha=6.0)
    t.sub_(torch.floor(t / 6.0).mul_(6.0))  # wrap to [0, 6); X is continuous at 0 == 6
    a = torch.tensor(_HUE_A, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    alpha = torch.tensor(_HUE_ALPHA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    beta = torch.tensor(_HUE_BETA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    out = torch.sub(t.unsqueeze(1), a, out=x)  # r, g, b are no longer needed: reuse x
    out.abs_().mul_(alpha).add_(beta).clamp_(0.0, 1.0)
    return out.mul_(c.unsqueeze(1)).add_(m.unsqueeze(1))


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """Scale intensities by per-sample factors (N,) (torchvision ``adjust_brightness``)."""
    return brightness_(x.clone(), factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its mean luma, per-sample factors (N,) (torchvision ``adjust_contrast``)."""
    return contrast_(x.clone(), factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """Blend each image with its luma image, per-sample factors (N,) (torchvision ``adjust_saturation``)."""
    return saturation_(x.clone(), factor)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by per-sample shifts (N,) in [-0.5, 0.5] turns (torchvision ``adjust_hue``)."""
    return hue_(x.clone(), shift)


# In-place jitter ops in torchvision's ColorJitter index order (brightness, contrast, saturation, hue).
JITTER_OPS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (brightness_, contrast_, saturation_, hue_)


def color_jitter_grouped_(x: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> tuple[Tensor, Tensor]:
    """Colour-jitter the samples in ``apply``, each with its own op order; may work in place on ``x``.

    ``factors`` (N, 4) holds the brightness, contrast and saturation factors and the hue shift,
    ``order`` (N, 4) a permutation of 0..3 per sample (its op sequence), ``apply`` (N,) bool.
    For each of the 4 positions the rows are regrouped (one row gather) by the op due there,
    so each op runs once per position on a contiguous slice; a position whose grouping equals
    the current row order needs no gather (with a fixed order, or for position 0 when the
    caller produced the rows pre-sorted by it, as ``ViewAugment`` does). One host sync per
    call. Returns ``(y, perm)`` with ``y[m]`` the jittered sample ``perm[m]``, so the caller
    scatters once at the end.
    """
    n = x.shape[0]
    rows = torch.arange(n, device=x.device)
    # Group key per position: the op index, or 4 for samples that are not jittered (kept last).
    key = torch.where(apply[:, None], order, torch.full_like(order, 4))
    targets = torch.argsort(key, dim=0, stable=True)  # column p: the rows sorted by their op at position p
    previous = torch.cat((rows[:, None], targets[:, :3]), dim=1)
    same = (targets == previous).all(dim=0, keepdim=True).long()  # (1, 4): no regrouping needed
    counts = torch.cat([torch.bincount(key[:, p], minlength=5)[None, :4] for p in range(4)])
    plan = torch.cat((counts, same.T), dim=1).tolist()  # the single host sync
    perm = rows  # x[m] holds sample perm[m]
    for p in range(4):
        *sizes, same_grouping = plan[p]
        if not same_grouping:
            where_now = torch.empty_like(perm).index_copy_(0, perm, rows)
            x = x.index_select(0, where_now[targets[:, p]])
        perm = targets[:, p]
        f = factors.index_select(0, perm)
        start = 0
        for op_index, op in enumerate(JITTER_OPS):
            stop = start + sizes[op_index]
            if stop > start:
                op(x[start:stop], f[start:stop, op_index])
            start = stop
    return x, perm


def color_jitter(x: Tensor, factors: Tensor, order: Tensor, apply: Tensor) -> Tensor:
    """Out-of-place ``color_jitter_grouped_`` with rows in input order (ColorJitter wrapped in RandomApply)."""
    y, perm = color_jitter_grouped_(x.clone(), factors, order, apply)
    return torch.empty_like(y).index_copy_(0, perm, y)


def random_grayscale_(x: Tensor, mask: Tensor) -> Tensor:
    """In place, replace the samples in ``mask`` (N,) bool by their 3-channel luma image."""
    return torch.where(mask.view(-1, 1, 1, 1), rgb_to_gray(x), x, out=x)


def random_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the samples in ``mask`` (N,) bool by their 3-channel luma image (RandomGrayscale)."""
    return random_grayscale_(x.clone(), mask)


def blur_kernel_size(side: int, fraction: float) -> int:
    """The odd kernel size nearest to ``fraction * side``, at least 3 (BYOL: 0.1 * 224 -> 23; 0.1 * 32 -> 3)."""
    return max(3, 2 * math.floor(fraction * side / 2) + 1)


def gaussian_kernels(sigma: Tensor, size: int) -> Tensor:
    """(N, size) normalised 1-D Gaussian kernels, one per sigma (N,), torchvision's ``_get_gaussian_kernel1d``."""
    half = (size - 1) / 2
    t = torch.linspace(-half, half, size, device=sigma.device, dtype=sigma.dtype)
    pdf = torch.exp(-0.5 * (t / sigma[:, None]) ** 2)
    return pdf / pdf.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Blur each image n with a ``size`` x ``size`` Gaussian of std ``sigma[n]`` (torchvision ``gaussian_blur``).

    Same kernel and border as torchvision: reflect padding (``F.pad`` mode "reflect": the edge
    pixel is not repeated) by size // 2 on every side. The 2-D kernel is separable, so it runs as
    two depthwise convolutions, one group per (image, channel), each with its own kernel.
    """
    n, c, height, width = x.shape
    pad = size // 2
    if pad >= min(height, width):
        raise ValueError(f"blur kernel {size} needs images larger than {pad} pixels, got {height}x{width}")
    weight = gaussian_kernels(sigma.to(x.dtype), size).repeat_interleave(c, dim=0)  # (n*c, size)
    y = F.pad(x.reshape(1, n * c, height, width), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, weight.view(n * c, 1, 1, size), groups=n * c)  # along W
    y = F.conv2d(y, weight.view(n * c, 1, size, 1), groups=n * c)  # along H
    return y.view(n, c, height, width)


def gaussian_blur_(x: Tensor, sigma: Tensor, mask: Tensor, size: int) -> Tensor:
    """In place, blur the samples in ``mask`` (N,) bool; the others keep their exact values."""
    return torch.where(mask.view(-1, 1, 1, 1), gaussian_blur(x, sigma, size), x, out=x)


def solarize_(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """In place, ``x -> 1 - x`` where ``x >= threshold`` in the samples in ``mask`` (torchvision ``solarize``)."""
    return torch.where(mask.view(-1, 1, 1, 1) & (x >= threshold), 1.0 - x, x, out=x)


def solarize(x: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Solarise the samples in ``mask`` (N,) bool: invert the values at or above ``threshold`` (RandomSolarize)."""
    return solarize_(x.clone(), mask, threshold)


def normalize_(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """In place per-channel ``(x - mean) / std``."""
    inv_std = 1.0 / torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    bias = -torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1) * inv_std
    return x.mul_(inv_std).add_(bias)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Per-channel ``(x - mean) / std``."""
    return normalize_(x.clone(), mean, std)
