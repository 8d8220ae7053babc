"""The decode-once cache: a split stored as images.npy, labels.npy and meta.json, memory-mapped on load.

Location: `<cache_dir>/<dataset>_<split>[_<image_size>]/`. The default `cache_dir` is
`<root>/.relssl_cache`; when `root` is not writable (read-only permission bits, a read-only mount,
or a shared data folder) it is `$XDG_CACHE_HOME/relssl/<hash of root>` (`~/.cache/relssl/...`).

Writing: both arrays are written in full to temporary files (`.images.npy.XXXXXXXX.tmp`, ...) with
plain writes, after reserving their space with posix_fallocate where the system has it, so a full
disk is an ENOSPC error and never a crash (SIGBUS) of a half-backed memory map. Only when both are
written is meta.json removed, the arrays renamed into place and meta.json written last, so a
failed or interrupted write leaves the previous cache as it was and a half-written cache is never
taken as valid. A full disk (ENOSPC, EDQUOT) raises NoSpaceError, a DataError that names the folder,
the bytes needed and the fix; its temporary files are removed. Temporary files left by a killed
write are removed by the next load or store of that folder once an hour old (relssl.data.leftovers).

What is detected (checked when the cache is loaded; a damaged cache is rebuilt with a RelsslWarning):
- a source file added, removed, renamed, or changed in size or modification time: the key stored
  in meta.json hashes the reader's parameters and the relative path, size and mtime of every
  source file, so the cache no longer matches and is rebuilt (silently: it is just out of date);
- images.npy of another size, or changed anywhere in its first or last HASH_CHUNK (64 MiB): meta.json
  holds a BLAKE2b digest of every 64 MiB chunk of images.npy, and every load checks the first and
  the last chunk (so a cache up to 128 MiB is checked in full every time);
- labels.npy changed in any way: its digest is checked in full on every load (8 bytes per image);
- with `verify` (config key data.verify_cache): images.npy changed in any chunk, and a source file
  whose content changed while its path, size and mtime stayed the same: every chunk is hashed, and
  so is every source file, against a digest of their content recorded when the cache was written.
What is not detected: without `verify`, a change inside a middle chunk of images.npy, and a source
file replaced by one of the same size and mtime; and, in any mode, changes made to images.npy after
it was loaded (the array is a memory map of the file) or meta.json rewritten together with the arrays.
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relssl.data.arrays import ImageArrays
from relssl.data.leftovers import mkstemp_pattern, remove_stale
from relssl.data.paths import is_writable_dir
from relssl.data.workers import default_workers
from relssl.errors import DataError, RelsslWarning

CACHE_VERSION = 2
LOCAL_CACHE_NAME = ".relssl_cache"
#: images.npy is hashed in chunks of this many bytes (recorded in meta.json, so it may change).
HASH_CHUNK = 64 << 20
_BLOCK = 16 << 20  # bytes per write
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_CANNOT_RESERVE = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
_FILES = ("images.npy", "labels.npy", "meta.json")
_TEMP_NAMES = mkstemp_pattern([f".{name}." for name in _FILES], ".tmp")


class NoSpaceError(DataError):
    """The disk (or quota) has no room for a decode cache: one line naming the folder, the bytes needed and the fix."""

    def __init__(self, folder: Path, needed: int, free: int | None) -> None:
        self.folder, self.needed, self.free = folder, needed, free
        have = f"{free} bytes are free there" if free is not None else "the free space there is unknown"
        super().__init__(
            f"no space left to write the decode cache {folder}: it needs {needed} bytes ({needed / 2**30:.2f} GiB) "
            f"and {have}. Free disk space there, or set data.cache_dir to a folder on a disk with room."
        )

    def __reduce__(self) -> tuple[type[NoSpaceError], tuple[Path, int, int | None]]:
        return NoSpaceError, (self.folder, self.needed, self.free)


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
        rows.append(f"{_relative(name, prefix)}\t{info.st_size}\t{info.st_mtime_ns}\n")
    rows.sort()
    digest.update("".join(rows).encode())
    return digest.hexdigest()


def content_digest(files: Iterable[str | Path], base: Path) -> str:
    """BLAKE2b of the bytes of every file (each once) with its path relative to `base`: what `verify` compares."""
    names = sorted({os.fspath(path) for path in files})
    with ThreadPoolExecutor(default_workers()) as pool:  # hashlib and file reads release the GIL
        digests = list(pool.map(_file_digest, names))
    prefix = str(base).rstrip(os.sep) + os.sep
    rows = sorted(f"{_relative(name, prefix)}\t{digest}\n" for name, digest in zip(names, digests))
    return hashlib.blake2b("".join(rows).encode(), digest_size=32).hexdigest()


def load(folder: Path, key: str, *, verify: bool = False,
         sources_digest: Callable[[], str] | None = None) -> ImageArrays | None:
    """The cached split in `folder` if its key is `key` and it passes its checks, else None.

    A cache that exists under `key` but fails a check is reported with a RelsslWarning (the caller
    rebuilds it). `verify` hashes all of images.npy and, through `sources_digest`, the source files.
    """
    remove_stale(folder, _TEMP_NAMES)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("version") != CACHE_VERSION:
            return None
    except (OSError, ValueError):
        return None
    problem = _check(folder, meta, verify, sources_digest)
    if problem is None:
        opened = _open(folder, meta)
        if opened is not None:
            return opened
        problem = "its arrays do not match meta.json"
    warnings.warn(f"decode cache {folder}: {problem}; rebuilding it.", RelsslWarning, stacklevel=2)
    return None


def store(folder: Path, key: str, arrays: ImageArrays, info: Mapping[str, object], *,
          sources_digest: str | None = None) -> ImageArrays:
    """Write `arrays` to `folder` under `key` (atomically) and return them memory-mapped from there.

    `sources_digest` (content_digest of the source files) is recorded for `verify`. Raises
    NoSpaceError when the disk is full, OSError if the folder cannot be written otherwise; either
    way the previous cache in `folder` is left as it was and no temporary file remains.
    """
    labels = np.asarray(arrays.labels, dtype=np.int64)
    needed = _npy_size(arrays.images) + _npy_size(labels)
    temps: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale(folder, _TEMP_NAMES)
        images_file = _write_npy(folder / "images.npy", arrays.images)
        temps.append(images_file.path)
        labels_file = _write_npy(folder / "labels.npy", labels)
        temps.append(labels_file.path)
        meta = {
            "version": CACHE_VERSION, "key": key, "shape": list(arrays.images.shape),
            "classes": list(arrays.classes), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "images": _record(images_file), "labels": _record(labels_file),
            "sources_blake2b": sources_digest, **info,
        }
        meta_tmp = _temp_path(folder / "meta.json")
        temps.append(meta_tmp)
        with open(meta_tmp, "wb") as handle:
            _write_block(handle, json.dumps(meta, indent=1).encode())
        (folder / "meta.json").unlink(missing_ok=True)
        os.replace(images_file.path, folder / "images.npy")
        os.replace(labels_file.path, folder / "labels.npy")
        os.replace(meta_tmp, folder / "meta.json")
    except BaseException as exc:
        for path in temps:
            path.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise NoSpaceError(folder, needed, _free_bytes(folder)) from exc
        raise
    loaded = _open(folder, meta)
    if loaded is None:  # pragma: no cover - only if the folder is changed under us
        raise OSError(f"cache written to {folder} could not be read back")
    return loaded


def _record(written: _Written) -> dict[str, object]:
    """What meta.json keeps of a written array file: its size and the digests of its chunks."""
    return {"bytes": written.size, "chunk_bytes": written.chunk, "blake2b": written.digests}


def _relative(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _file_digest(path: str) -> str:
    """BLAKE2b-256 of a source file's bytes; a DataError naming it when it cannot be read."""
    digest = hashlib.blake2b(digest_size=32)
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read source file {path} to checksum it for the decode cache: "
                        f"{exc.strerror or exc}. Fix its permissions, or remove it.") from exc
    return digest.hexdigest()


def _open(folder: Path, meta: Mapping[str, Any]) -> ImageArrays | None:
    """Memory-map the arrays of `folder` described by `meta`; None if they do not match it."""
    try:
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        if list(images.shape) != meta["shape"] or images.dtype != np.uint8 or labels.dtype != np.int64:
            return None
        labels.flags.writeable = False
        return ImageArrays(images, labels, tuple(meta["classes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check(folder: Path, meta: Mapping[str, Any], verify: bool,
           sources_digest: Callable[[], str] | None) -> str | None:
    """Why the cache in `folder` cannot be trusted (a clause naming the file), or None if it passes."""
    try:
        for name, full in (("labels.npy", True), ("images.npy", verify)):
            record = meta[name.split(".")[0]]
            path, chunk, digests = folder / name, int(record["chunk_bytes"]), list(record["blake2b"])
            size = path.stat().st_size
            if size != record["bytes"]:
                return f"{name} failed its checksum ({size} bytes, expected {record['bytes']})"
            which = range(len(digests)) if full else sorted({0, len(digests) - 1})
            bad = _bad_chunk(path, chunk, digests, which)
            if bad is not None:
                where = f"bytes {bad * chunk}..{min(size, (bad + 1) * chunk) - 1}"
                return f"{name} failed its checksum (altered in {where})"
    except (KeyError, TypeError, ValueError):
        return "meta.json is damaged"
    except OSError as exc:
        return f"cannot read it ({exc})"
    if verify and sources_digest is not None and meta.get("sources_blake2b") != sources_digest():
        return ("the source files have changed since it was written (same names, sizes and modification times, "
                "different content)")
    return None


def _bad_chunk(path: Path, chunk: int, digests: Sequence[str], which: Iterable[int]) -> int | None:
    """The first index in `which` whose `chunk`-byte piece of `path` does not have its digest, or None."""
    with open(path, "rb") as handle:
        for index in which:
            handle.seek(index * chunk)
            digest = hashlib.blake2b(digest_size=16)
            left = chunk
            while left > 0:
                block = handle.read(min(left, 1 << 22))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
            if digest.hexdigest() != digests[index]:
                return index
    return None


@dataclass(frozen=True)
class _Written:
    """A fully written temporary .npy file: where, how big, and the digests of its chunks."""

    path: Path
    size: int
    chunk: int
    digests: list[str]  # hex BLAKE2b-128 of each `chunk` bytes of the file, the last chunk shorter


class _ChunkHasher:
    """BLAKE2b digests of consecutive `chunk`-byte pieces of a stream of bytes."""

    def __init__(self, chunk: int) -> None:
        self.chunk, self.filled = chunk, 0
        self.digests: list[str] = []
        self.current = hashlib.blake2b(digest_size=16)

    def update(self, data: memoryview) -> None:
        while len(data):
            take = min(self.chunk - self.filled, len(data))
            self.current.update(data[:take])
            self.filled, data = self.filled + take, data[take:]
            if self.filled == self.chunk:
                self._close()

    def _close(self) -> None:
        self.digests.append(self.current.hexdigest())
        self.current, self.filled = hashlib.blake2b(digest_size=16), 0

    def finish(self) -> list[str]:
        if self.filled or not self.digests:
            self._close()
        return self.digests


def _npy_header(array: np.ndarray) -> bytes:
    """The .npy header np.save would write for `array` (C order)."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False, "shape": array.shape}
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # pragma: no cover - a header over 64 KiB: only for absurd shapes
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def _npy_size(array: np.ndarray) -> int:
    return len(_npy_header(array)) + array.nbytes


def _blocks(array: np.ndarray) -> Iterator[memoryview]:
    """The bytes of `array` in C order, a few rows (about _BLOCK bytes) at a time (works for lazy memmap views)."""
    if array.size == 0:
        return
    rows = max(1, _BLOCK // max(1, array[0].nbytes))
    for start in range(0, array.shape[0], rows):
        yield np.ascontiguousarray(array[start : start + rows]).reshape(-1).view(np.uint8).data


def _write_npy(target: Path, array: np.ndarray) -> _Written:
    """Write `array` as .npy to a temporary file next to `target` (space reserved first); the caller renames it."""
    header = _npy_header(array)
    size = len(header) + array.nbytes
    hasher = _ChunkHasher(HASH_CHUNK)
    tmp = _temp_path(target)
    try:
        with open(tmp, "wb") as handle:
            _reserve(handle.fileno(), size)
            for block in itertools.chain([memoryview(header)], _blocks(array)):  # lazily: one block in memory
                _write_block(handle, block)
                hasher.update(block)
        return _Written(tmp, size, hasher.chunk, hasher.finish())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reserve(fd: int, size: int) -> None:
    """Allocate `size` bytes for `fd` now (ENOSPC here, not later); a no-op where the filesystem cannot."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in _CANNOT_RESERVE:
            raise


def _write_block(handle: io.BufferedWriter, data: memoryview | bytes) -> None:
    """One plain write (a full disk is an OSError here, unlike a write into a sparse memory map)."""
    handle.write(data)


def _free_bytes(folder: Path) -> int | None:
    """Bytes free for an unprivileged user on the filesystem of `folder` (or its nearest existing parent)."""
    path = folder
    while not path.exists() and path.parent != path:
        path = path.parent
    try:
        stats = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return stats.f_bavail * stats.f_frsize


def _temp_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp makes it owner-only; a cache may be shared
    return Path(name)
