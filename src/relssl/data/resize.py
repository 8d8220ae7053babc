"""Bring images to one fixed size without distorting them (resize the shorter side, centre-crop)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from relssl.data.workers import default_workers
from relssl.progress import Progress

_CHUNK = 1024


def fit_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale `image` (bilinear, antialiased) so it covers `size` = (height, width), then centre-crop.

    Keeping the aspect ratio avoids stretching objects; for images that already have the target
    aspect ratio (the usual case: square to square) this is a plain resize.
    """
    height, width = size
    if image.height == height and image.width == width:
        return image
    scale = max(height / image.height, width / image.width)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


def resize_images(images: np.ndarray, size: int, *, progress: bool = False, desc: str = "resize") -> np.ndarray:
    """Return uint8 (N, H, W, 3) `images` brought to size x size with `fit_image` (threaded: PIL drops the GIL)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((images.shape[0], size, size, 3), dtype=np.uint8)

    def work(start: int) -> int:
        stop = min(start + _CHUNK, len(images))
        for i in range(start, stop):
            out[i] = np.asarray(fit_image(Image.fromarray(np.ascontiguousarray(images[i])), (size, size)))
        return stop - start

    with ThreadPoolExecutor(default_workers()) as pool, Progress(len(images), desc, "img", show=progress) as bar:
        for done in pool.map(work, range(0, len(images), _CHUNK)):
            bar.update(done)
    return out
