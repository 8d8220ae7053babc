"""Decode many image files into one uint8 array, in parallel, failing with the name of a bad file.

Small images cost more in Python-level PIL overhead (about 0.1 ms each) than in JPEG decoding,
so threads barely help; on Linux a forked process pool is used instead (2 cores: about 2x).
Elsewhere, or inside a daemon process that may not fork, a thread pool is used.
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
from tqdm import tqdm

from relssl.data.resize import fit_image
from relssl.data.workers import default_workers
from relssl.errors import DataError

_CHUNK = 256
_MIN_FOR_PROCESSES = 2048  # below this a pool of processes costs more than it saves


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
) -> np.ndarray:
    """Decode `paths` to uint8 (N, H, W, 3) RGB; images of another size are fitted to `size`.

    `size` is (height, width); None means the size of the first image.
    """
    if size is None:
        size = image_size(paths[0])
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    starts = range(0, len(paths), _CHUNK)
    pool = _make_pool(len(paths), workers or default_workers())
    try:
        with warnings.catch_warnings(), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
            # Python >= 3.12 warns about forking a process that has threads; the children
            # only run PIL and NumPy on their own data, so the usual deadlock risk does not apply.
            warnings.filterwarnings("ignore", message=".*multi-threaded.*fork", category=DeprecationWarning)
            chunks = pool.map(_decode_chunk, [paths[s : s + _CHUNK] for s in starts], [size] * len(starts))
            for start, chunk in zip(starts, chunks):
                out[start : start + len(chunk)] = chunk
                bar.update(len(chunk))
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


def _make_pool(count: int, workers: int) -> Executor:
    """A forked process pool for big Linux jobs, else threads (always possible)."""
    forkable = sys.platform.startswith("linux") and not multiprocessing.current_process().daemon
    if workers > 1 and count >= _MIN_FOR_PROCESSES and forkable:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    return ThreadPoolExecutor(workers)


def _decode_chunk(paths: Sequence[str | Path], size: tuple[int, int]) -> np.ndarray:
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, size)
    return out


def decode_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 (H, W, 3) RGB of `size`, or a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(fit_image(rgb, size))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise _bad_image(path, exc) from exc


def _bad_image(path: str | Path, exc: BaseException) -> DataError:
    return DataError(f"cannot read image {path}: {exc}. Remove or replace this file.")
