"""The on-disk state of `relssl embed`: what is being embedded (identity), how far it got, and the final files.

While running, OUT/.embed/ holds `rows.npy` (a float32 memmap with one row per listed image) and
`progress.json` (the identity, the rows done, the unreadable images so far), rewritten
atomically after each batch. When every image is done, OUT gets `embeddings.npy` (the readable
rows only), `files.txt`, `unreadable.txt` and, last, `embed.json`, which marks the run finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from relssl.errors import ConfigError, DataError
from relssl.files import atomic_write

__all__ = ["EmbedState", "files_digest", "weights_digest"]

PARTIAL = ".embed"
RESULT_FILES = ("embeddings.npy", "files.txt", "unreadable.txt", "embed.json")
_COPY_ROWS = 65536


def weights_digest(backbone: nn.Module) -> str:
    """A digest of every tensor of the backbone's state dict (names, shapes, dtypes, values)."""
    digest = hashlib.blake2b(digest_size=16)
    for key, value in sorted(backbone.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def files_digest(root: Path, relative: list[str]) -> str:
    """A digest of the listed files: relative path, size and modification time of each."""
    digest = hashlib.blake2b(digest_size=16)
    for name in relative:
        info = os.stat(root / name)
        digest.update(f"{name}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


_WHAT = {"checkpoint": "another checkpoint", "files": "a changed image folder (files added, removed or modified)",
         "preprocess": "other preprocessing", "normalize": "another --normalize setting",
         "feature_dim": "another feature size"}


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [key for key in new if old.get(key) != new[key]]
    return ", ".join(_WHAT.get(key, key) for key in keys) or "other inputs"


@dataclass
class EmbedState:
    """The progress of embedding `count` images into `out` (see the module docstring)."""

    out: Path
    identity: dict[str, Any]
    count: int
    dim: int
    done: int = 0
    unreadable: list[int] = field(default_factory=list)

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL

    def finished(self, restart: bool) -> bool:
        """True when `out` already holds this very result; refuses other results unless `restart` (then clears them)."""
        record = self.out / "embed.json"
        if record.is_file() and not restart:
            old = json.loads(record.read_text()).get("identity", {})
            if old == self.identity:
                return True
            raise ConfigError(f"{self.out} holds embeddings made from {_difference(old, self.identity)}; pass "
                              "--restart to replace them, or choose another --output")
        foreign = [n for n in RESULT_FILES if (self.out / n).exists()] if not record.is_file() else []
        if foreign and not restart and not (self.partial / "progress.json").is_file():
            raise ConfigError(f"{self.out} already holds {foreign[0]}, not written by relssl embed; pass --restart "
                              "to replace it, or choose another --output")
        if restart:
            for name in RESULT_FILES:
                (self.out / name).unlink(missing_ok=True)
            shutil.rmtree(self.partial, ignore_errors=True)
        return False

    def open_rows(self) -> np.memmap:
        """The rows memmap, continuing a previous attempt with the same identity (refusing another one)."""
        progress = self.partial / "progress.json"
        rows_file = self.partial / "rows.npy"
        if progress.is_file() and rows_file.is_file():
            record = json.loads(progress.read_text())
            if record.get("identity") != self.identity:
                raise ConfigError(f"{self.out} holds an unfinished embedding of {_difference(record['identity'], self.identity)}; "
                                  "pass --restart to start again, or choose another --output")
            self.done, self.unreadable = int(record["done"]), [int(i) for i in record["unreadable"]]
            rows = np.load(rows_file, mmap_mode="r+")
            if rows.shape == (self.count, self.dim):
                return rows
            self.done, self.unreadable = 0, []
        self.partial.mkdir(parents=True, exist_ok=True)
        rows = np.lib.format.open_memmap(rows_file, mode="w+", dtype=np.float32, shape=(self.count, self.dim))
        self.save()
        return rows

    def save(self) -> None:
        """Rewrite progress.json atomically (call after flushing the rows it counts)."""
        record = {"identity": self.identity, "done": self.done, "unreadable": self.unreadable}
        _write_text(self.partial / "progress.json", json.dumps(record))

    def finish(self, rows: np.memmap, relative: list[str], extra: dict[str, Any]) -> int:
        """Write the result files (readable rows only, in listing order); return the rows written."""
        bad = np.zeros(self.count, dtype=bool)
        bad[self.unreadable] = True
        keep = np.flatnonzero(~bad)
        tmp = self.out / ".embeddings.npy.tmp"
        result = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(keep), self.dim))
        for start in range(0, len(keep), _COPY_ROWS):
            part = keep[start : start + _COPY_ROWS]
            result[start : start + len(part)] = rows[part]
        result.flush()
        del result
        os.replace(tmp, self.out / "embeddings.npy")
        _write_text(self.out / "files.txt", "".join(f"{relative[i]}\n" for i in keep))
        _write_text(self.out / "unreadable.txt", "".join(f"{relative[i]}\n" for i in sorted(self.unreadable)))
        summary = {"identity": self.identity, "images": self.count, "embedded": len(keep),
                   "unreadable": len(self.unreadable), "feature_dim": self.dim, **extra}
        _write_text(self.out / "embed.json", json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(self.partial, ignore_errors=True)
        return len(keep)


def _embed_write_error(path: Path, err: BaseException) -> DataError:
    """The one-line error of a refused write into the embedding output."""
    detail = err.strerror if isinstance(err, OSError) and err.strerror else err
    return DataError(f"cannot write {path} ({detail}); free space or choose another --output")


def _write_text(path: Path, text: str) -> None:
    """Write `path` atomically (relssl.files), so a kill leaves the old or the new file."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write, _embed_write_error, mode=0o644)
