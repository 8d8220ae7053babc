"""Atomic writes of a run's files, safe checkpoint loads (no arbitrary unpickling), and clearing temporary files.

Every file of a run directory is written to a temporary file beside it (`.<name>.<8 random>.tmp`),
fsynced, then renamed over the real name, so a kill at any moment leaves the previous file whole.
A failed write (a full disk, a folder without write permission) is a `CheckpointError`: one line
that names the file and says how to continue; the temporary file is removed and the old file kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from relssl import files
from relssl.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "RESUME_KEYS", "WEIGHT_KEYS", "CheckpointError", "atomic_write", "is_write_failure",
           "load_checkpoint", "remove_stale_temp_files", "save_backbone_safetensors", "save_checkpoint", "write_error",
           "write_text"]

CHECKPOINT_FORMAT = "relssl-checkpoint-v1"
#: The parts of a checkpoint that resuming needs, and the ones that reading its backbone needs.
RESUME_KEYS = ("config", "method", "optimizer", "scaler", "train_state")
WEIGHT_KEYS = ("config", "method")
#: Temporary names `atomic_write` gives the files of a run directory (mkstemp: 8 of [a-z0-9_]), and the
#: fixed name older versions wrote metrics.json through.
_TEMP_NAME = re.compile(r"\.(last\.pt|epoch\d+\.pt|backbone\.safetensors|config\.yaml|metrics\.json|train_log\.csv"
                        r"|diagnostics\.csv)\.[a-z0-9_]{8}\.tmp|metrics\.json\.tmp")
#: How torch.save and safetensors report a write the file system refused (they raise no OSError).
_WRITE_FAILURE_TEXT = ("unexpected pos", "file write failed", "failed writing", "I/O error", "No space left")


def is_write_failure(err: BaseException) -> bool:
    """Whether `err` is the file system refusing a write, as opposed to a bug in what was being written."""
    if isinstance(err, OSError):
        return True
    return isinstance(err, (RuntimeError, SafetensorError)) and any(text in str(err) for text in _WRITE_FAILURE_TEXT)


def write_error(path: Path, err: BaseException) -> CheckpointError:
    """The one-line error of a failed write of `path`: the cause, the free space, and how to continue."""
    what = "checkpoint" if path.suffix == ".pt" else "run file"
    detail = err.strerror if isinstance(err, OSError) and err.strerror else (str(err).splitlines() or [""])[0]
    free = ""
    with contextlib.suppress(OSError):
        free = f", {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free there"
    kept = f"the previous {path.name} is kept; " if path.exists() else ""
    then = (f"continue with: relssl train --resume {path.parent}" if (path.parent / "last.pt").is_file()
            else "start the run again")
    return CheckpointError(f"cannot write {what} {path} ({type(err).__name__}: {detail}{free}); {kept}free space "
                           f"or fix the folder's permissions, then {then}")


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write a run file through `write(temporary path)` in the same folder, fsync, then rename over `path`."""
    files.atomic_write(path, write, write_error, is_failure=is_write_failure)


def write_text(path: Path, text: str) -> None:
    """Write a small text file of a run directory atomically, readable by all like a file `open` makes."""

    def write(tmp: str) -> None:
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        with open(tmp, "w", newline="") as fh:
            fh.write(text)

    atomic_write(path, write)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save a dict of tensors and plain values; readable with `torch.load(weights_only=True)`."""
    path = Path(path)
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files killed writes left in `run_dir`; returns them.

    Call only while holding the run directory's lock (relssl.train.lock): a live writer's
    temporary file looks the same. Only names `atomic_write` makes for a run's files match.
    """
    removed = []
    for path in Path(run_dir).iterdir():
        if _TEMP_NAME.fullmatch(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _check_contents(ckpt: object, path: Path, require: tuple[str, ...]) -> dict[str, Any]:
    """`ckpt` when it is a relssl checkpoint holding the `require`d parts, else a CheckpointError saying what it is."""
    fix = "pass a relssl run directory or its last.pt"
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a relssl training checkpoint (it holds a {type(ckpt).__name__}); {fix}")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        plain = bool(ckpt) and all(isinstance(value, torch.Tensor) for value in ckpt.values())
        what = "a plain state dict of tensors" if plain else "no relssl format tag"
        raise CheckpointError(f"{path} is not a relssl training checkpoint ({what}); {fix}")
    missing = [key for key in require if not isinstance(ckpt.get(key), dict)]
    if missing:
        names = ", ".join(f"'{key}'" for key in missing)
        raise CheckpointError(f"checkpoint {path} is incomplete ({names} missing or not a mapping); {fix}")
    return ckpt


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    require: tuple[str, ...] = RESUME_KEYS) -> dict[str, Any]:
    """Load a relssl checkpoint with `weights_only=True` (a hostile file cannot run code).

    `path` is a .pt file or a run directory (its last.pt). The file must carry relssl's format tag
    and the `require`d parts (by default all that resuming needs; `WEIGHT_KEYS` for the backbone).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a .pt file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # corrupt file or one holding arbitrary objects
        detail = (str(err).splitlines() or ["no details"])[0]  # an empty file raises with an empty message
        raise CheckpointError(f"cannot load checkpoint {path} safely ({type(err).__name__}: {detail})") from None
    return _check_contents(ckpt, path, require)


def save_backbone_safetensors(backbone: torch.nn.Module, path: str | Path,
                              metadata: dict[str, str] | None = None) -> Path:
    """Export backbone weights alone as safetensors, loadable in plain PyTorch, with string `metadata`."""
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path
