"""Decode many image files into one uint8 array, in parallel, failing with the name of a bad file.

Small images cost more in Python-level PIL overhead (about 0.1 ms each) than in JPEG decoding,
so threads barely help; on Linux a forked process pool is used instead (2 cores: about 2x).
Elsewhere, or inside a daemon process that may not fork, a thread pool is used.

Every image becomes 8-bit RGB (`to_rgb`). High bit depths keep their top 8 bits: a 16-bit value v
becomes v >> 8 (0..65535 -> 0..255; within 1 of round(v * 255 / 65535)), which is also what PIL
itself does for 16-bit RGB, RGBA and grayscale+alpha PNGs. That applies to the 16-bit grayscale
modes I;16, I;16L, I;16B and I;16N, and to mode I (32-bit integers, which is how PIL opens 16-bit
PPM/PGM files, scaled to 0..65535), whose values are first clipped to 0..65535. Floating-point
images (mode F) have no agreed range, so they are refused with a DataError naming the file.
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from relssl.data.resize import fit_image
from relssl.data.workers import default_workers
from relssl.errors import DataError, RelsslWarning
from relssl.progress import Progress

_CHUNK = 256
_MIN_FOR_PROCESSES = 2048  # below this a pool of processes costs more than it saves
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, reading only its header."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception as exc:  # PIL raises many types for bad files
        raise _bad_image(path, exc) from exc


def decode_images(
    paths: Sequence[str | Path],
    size: tuple[int, int] | None = None,
    *,
    progress: bool = True,
    desc: str = "decode",
    workers: int | None = None,
    note_other_sizes: str | None = None,
) -> np.ndarray:
    """Decode `paths` to uint8 (N, H, W, 3) RGB; images of another size are fitted to `size`.

    `size` is (height, width); None means the size of the first image. With `note_other_sizes`
    (why `size` was chosen, e.g. "the most common size"), a RelsslWarning counts the images that
    had another size and were resized.
    """
    if size is None:
        size = image_size(paths[0])
    try:
        out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    except MemoryError:
        gib = len(paths) * size[0] * size[1] * 3 / 2**30
        raise DataError(f"decoding {len(paths)} images of {size[0]}x{size[1]} needs {gib:.1f} GiB of memory, more "
                        "than there is. Set data.image_size to a smaller size, or stream the data (data.stream)."
                        ) from None
    starts = range(0, len(paths), _CHUNK)
    resized, example = 0, None
    pool = _make_pool(len(paths), workers or default_workers())
    try:
        with warnings.catch_warnings(), Progress(len(paths), desc, "img", show=progress) as bar:
            # Python >= 3.12 warns about forking a process that has threads; the children
            # only run PIL and NumPy on their own data, so the usual deadlock risk does not apply.
            warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
            chunks = pool.map(_decode_chunk, [paths[s : s + _CHUNK] for s in starts], [size] * len(starts))
            for start, (chunk, others) in zip(starts, chunks):
                out[start : start + len(chunk)] = chunk
                resized += len(others)
                example = example if example is not None or not others else paths[start + others[0]]
                bar.update(len(chunk))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if resized and note_other_sizes is not None:
        warnings.warn(f"{resized} of {len(paths)} images are not {size[0]}x{size[1]} (height x width), "
                      f"{note_other_sizes} (e.g. {example}); they were resized on the shorter side and "
                      "centre-cropped to it. Set data.image_size to choose the size.", RelsslWarning, stacklevel=2)
    return out


def _make_pool(count: int, workers: int) -> Executor:
    """A forked process pool for big Linux jobs, else threads (always possible)."""
    forkable = sys.platform.startswith("linux") and not multiprocessing.current_process().daemon
    if workers > 1 and count >= _MIN_FOR_PROCESSES and forkable:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def _decode_chunk(paths: Sequence[str | Path], size: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """The images of `paths` at `size`, and the indices of those that had another size."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    others = []
    for i, path in enumerate(paths):
        out[i], native = _decode(path, size)
        if native != size:
            others.append(i)
    return out, others


def decode_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB of `size`, or a DataError naming the file."""
    return _decode(path, size)[0]


def _decode(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """One image file as uint8 (H, W, 3) RGB of `size`, with its own (height, width)."""
    try:
        with Image.open(path) as image:
            image.load()
            native = (image.height, image.width)
            return np.asarray(fit_image(to_rgb(image, path), size)), native
    except DataError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise _bad_image(path, exc) from exc


def to_rgb(image: Image.Image, path: str | Path) -> Image.Image:
    """`image` as 8-bit RGB: 16-bit and 32-bit integer modes keep their top 8 bits (see the module docstring).

    A floating-point image (mode F) is a DataError naming `path`.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if image.mode == "I":
            values = np.clip(values, 0, 65535)
        return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8)).convert("RGB")  # 2-D uint8: mode L
    if image.mode == "F":
        raise DataError(f"cannot read image {path}: it is a floating-point image (mode F), which has no standard "
                        "range. Convert it to 8-bit (or 16-bit) RGB or grayscale.")
    return image.convert("RGB")


def _bad_image(path: str | Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read image {path}: {exc}. Remove or replace this file.")
