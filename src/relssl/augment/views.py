"""K randomly augmented views of a batch of images, made in a few batched tensor ops."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops
from .config import AugmentConfig
from .params import ViewParams, sample_view_params

__all__ = ["ViewAugment", "to_normalized"]

# On CPU the views are made in chunks of about this many bytes of float output per intra-op
# thread: the ~60 elementwise passes then run on data that stays in the threads' L2 caches
# instead of streaming the whole (K*B, 3, H, W) tensor through memory each time. Measured for
# K=32, B=64, 32x32 on the 2-core dev box: 4 MB per thread beat 2 MB, 13 MB and one 25 MB
# chunk by 10-70% (smaller chunks lose to per-op dispatch overhead). On GPUs: one chunk.
CPU_CHUNK_BYTES_PER_THREAD = 4 << 20


class ViewAugment(torch.nn.Module):
    """Per-sample random RandomResizedCrop, flip, colour jitter, grayscale, blur, solarisation and normalisation.

    K views at once, in BYOL's op order. Every parameter is drawn independently per view and per
    image from torchvision's distributions: crop boxes exactly as ``RandomResizedCrop.get_params``
    (10 tries, then its centre-crop fallback), flip with ``flip_p``, ColorJitter with ``jitter_p``
    and its own op order per view (``jitter_order``), RandomGrayscale with ``gray_p``,
    GaussianBlur (sigma ~ U(``blur_sigma``), odd kernel ~``blur_kernel_fraction`` of the view's
    shorter side, reflect padding) with ``blur_p`` and RandomSolarize (threshold 0.5) with
    ``solarize_p``, the last two per view (view v: entry v mod len). Images stay on their device
    and no Python loop runs over images or views (only over a few chunks on CPU). Differences from
    the reference PIL pipeline: all ops work in float (no uint8 rounding between them), and
    resizing is bilinear without antialiasing (see ``ops.crop_resize_flip``).
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AugmentConfig()

    def forward(self, images: Tensor, k: int, generator: torch.Generator | None = None,
                cropped: bool = False) -> Tensor:
        """uint8 images (B, H, W, 3) or (B, 3, H, W) -> float (k*B, 3, size, size), view-major.

        Rows [v*B:(v+1)*B] are view v of all B images. With ``size=None`` the output keeps the
        input's (H, W). All randomness comes from ``generator`` (global RNG if None), so a seed
        reproduces the views exactly on a given device. ``cropped``: the input already holds the
        k*B random-resized crops, view-major (the streaming reader takes them from the full-size
        images); every op but the crop is applied.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (number of views) must be a positive integer, got {k!r}")
        cfg = self.config
        cfg.check_views(k)
        x = ops.as_float_nchw(images)
        b, _, height, width = x.shape
        if cropped and b % k:
            raise ValueError(f"cropped input must hold k*B view-major crops, got {b} rows for k={k}")
        out_hw = (cfg.size, cfg.size) if cfg.size is not None and not cropped else (height, width)
        n = b if cropped else k * b
        params = sample_view_params(cfg, n, height, width, x.device, generator, views=k)
        source = torch.arange(n, device=x.device) % b  # view-major: row v*B + i is view v of image i
        out = torch.empty(n, 3, *out_hw, device=x.device, dtype=x.dtype)
        chunk = n
        if x.device.type == "cpu":
            chunk_bytes = CPU_CHUNK_BYTES_PER_THREAD * torch.get_num_threads()
            chunk = max(1, chunk_bytes // (3 * out_hw[0] * out_hw[1] * x.element_size()))
        for start in range(0, n, chunk):
            rows = slice(start, min(n, start + chunk))
            self._make_views(x, source[rows], params.take(rows), out_hw, out[rows], crop=not cropped)
        return out

    def _make_views(self, x: Tensor, source: Tensor, p: ViewParams, out_hw: tuple[int, int], out: Tensor,
                    crop: bool = True) -> None:
        """Write the views described by (``source``, ``p``) into ``out`` (rows in the same order)."""
        cfg = self.config
        jitter = cfg.jitter_p > 0 and max(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue) > 0
        perm = torch.arange(source.shape[0], device=x.device)
        if jitter:
            # Make the views already grouped by their first jitter op: saves colour_jitter a gather.
            first = torch.where(p.jitter, p.order[:, 0], torch.full_like(p.order[:, 0], 4))
            perm = torch.argsort(first, stable=True)
            p = p.take(perm)
        if crop:
            views = ops.crop_resize_flip(x, source[perm], p.boxes, p.flip, out_hw)
        else:  # the crops are taken already: only the flip of the crop-and-flip op
            views = x[source[perm]]
            views = torch.where(p.flip[:, None, None, None], views.flip(-1), views)
        if jitter:
            views, regroup = ops.color_jitter_grouped_(views, p.factors, p.order, p.jitter)
            perm, p = perm[regroup], p.take(regroup)
        if cfg.gray_p > 0:
            ops.random_grayscale_(views, p.gray)
        if cfg.blurs:
            ops.gaussian_blur_(views, p.sigma, p.blur, ops.blur_kernel_size(min(out_hw), cfg.blur_kernel_fraction))
        if cfg.solarizes:
            ops.solarize_(views, p.solarize)
        ops.normalize_(views, *cfg.normalization())
        out.index_copy_(0, perm, views)

    def extra_repr(self) -> str:
        return repr(self.config)


def to_normalized(
    images: Tensor, mean: Sequence[float], std: Sequence[float], size: int | None = None
) -> Tensor:
    """Un-augmented evaluation path: uint8 (B, H, W, 3)/(B, 3, H, W) -> normalised float (B, 3, H', W').

    Resizes to size x size (bilinear, antialiased, like torchvision's ``Resize``) only if
    ``size`` is given and differs from the input.
    """
    x = ops.as_float_nchw(images)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return ops.normalize_(x, mean, std)
