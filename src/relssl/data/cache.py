"""The decode-once cache: a split stored as images.npy, labels.npy and meta.json, memory-mapped on load.

Location: `<cache_dir>/<dataset>_<split>[_<image_size>]/`. The default `cache_dir` is
`<root>/.relssl_cache`; when `root` is not writable (read-only permission bits, a read-only mount,
or a shared data folder) it is `$XDG_CACHE_HOME/relssl/<hash of root>` (`~/.cache/relssl/...`).

The key stored in meta.json hashes the reader's parameters and the relative path, size and
modification time of every source file, so a changed, added or removed file means a rebuild and
a stale cache is never used. Files are written under temporary names and renamed into place;
meta.json is removed first and written last, so a half-written cache is never taken as valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from relssl.data.arrays import ImageArrays
from relssl.data.paths import is_writable_dir

CACHE_VERSION = 1
LOCAL_CACHE_NAME = ".relssl_cache"
_COPY_ROWS = 4096


def user_cache_base() -> Path:
    """`$XDG_CACHE_HOME/relssl`, default `~/.cache/relssl`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relssl"


def default_cache_bases(root: Path) -> list[Path]:
    """Where a split of `root` may be cached, best first: `<root>/.relssl_cache` if writable, then the user cache."""
    fallback = user_cache_base() / hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    local = root / LOCAL_CACHE_NAME
    if is_writable_dir(local) or (not local.exists() and is_writable_dir(root)):
        return [local, fallback]
    return [fallback]


def cache_folder_name(dataset: str, split: str, image_size: int | None) -> str:
    """`<dataset>_<split>[_<image_size>]`."""
    return f"{dataset}_{split}" + (f"_{image_size}" if image_size is not None else "")


def fingerprint(files: Iterable[str | Path], base: Path, params: Mapping[str, object]) -> str:
    """SHA-256 of `params` and of (path relative to `base`, size, mtime) of every file."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    prefix = str(base).rstrip(os.sep) + os.sep
    rows = []
    for path in files:
        name = os.fspath(path)
        info = os.stat(name)
        rel = name[len(prefix):] if name.startswith(prefix) else name
        rows.append(f"{rel}\t{info.st_size}\t{info.st_mtime_ns}\n")
    rows.sort()
    digest.update("".join(rows).encode())
    return digest.hexdigest()


def load(folder: Path, key: str) -> ImageArrays | None:
    """The cached split in `folder` if its key is `key` and its files are intact, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key or meta.get("version") != CACHE_VERSION:
            return None
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8 or labels.dtype != np.int64:
            return None
        labels.flags.writeable = False
        return ImageArrays(images, labels, tuple(meta["classes"]))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def store(folder: Path, key: str, arrays: ImageArrays, info: Mapping[str, object]) -> ImageArrays:
    """Write `arrays` to `folder` under `key` (atomically) and return them memory-mapped from there.

    Raises OSError if the folder cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").unlink(missing_ok=True)
    _write_npy(folder / "images.npy", arrays.images)
    _write_npy(folder / "labels.npy", np.asarray(arrays.labels, dtype=np.int64))
    meta = {
        "version": CACHE_VERSION, "key": key, "shape": list(arrays.images.shape),
        "classes": list(arrays.classes), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info,
    }
    _atomic_write_bytes(folder / "meta.json", json.dumps(meta, indent=1).encode())
    loaded = load(folder, key)
    if loaded is None:  # pragma: no cover - only if the folder is changed under us
        raise OSError(f"cache written to {folder} could not be read back")
    return loaded


def _temp_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes it owner-only; a cache may be shared
    return Path(name)


def _write_npy(target: Path, array: np.ndarray) -> None:
    """Save `array` as .npy via a temporary file, copying in row blocks (works for lazy views of memmaps)."""
    tmp = _temp_path(target)
    try:
        if array.size == 0:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        else:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
            for start in range(0, array.shape[0], _COPY_ROWS):
                out[start : start + _COPY_ROWS] = array[start : start + _COPY_ROWS]
            out.flush()
            del out
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    tmp = _temp_path(target)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
