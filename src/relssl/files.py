"""Atomic file writes: through a temporary file beside the target, renamed over it once complete.

A reader never sees a half-written file, and a failure leaves the previous file (if any) as it
was. Each caller turns a refused write into its own one-line error (what to do next differs:
resume a run, choose another --output, …).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def _is_os_error(err: BaseException) -> bool:
    return isinstance(err, OSError)


def atomic_write(path: Path, write: Callable[[str], None], error: Callable[[Path, BaseException], Exception], *,
                 is_failure: Callable[[BaseException], bool] = _is_os_error, mode: int | None = None) -> None:
    """Write `path` through `write(temporary path)` in the same folder, fsync, optionally chmod, then rename.

    An exception for which `is_failure` holds (by default an OSError: the file system refused the
    write) is raised as `error(path, exception)`; any other keeps its traceback. `mode` (e.g. 0o644)
    replaces the owner-only permissions `mkstemp` gives.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise error(path, err) from None
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, Exception) and is_failure(err):
            raise error(path, err) from None
        raise
