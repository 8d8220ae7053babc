"""One writer per run directory: an exclusive lock on `RUN/.lock` while a process trains or resumes there."""

from __future__ import annotations

import contextlib
import fcntl
import os
import warnings
from pathlib import Path
from types import TracebackType

from relssl.errors import ConfigError, RelsslWarning

__all__ = ["LOCK_NAME", "RunDirLock"]

LOCK_NAME = ".lock"
#: Locks this process holds: real path of the run directory -> [file descriptor, nesting depth].
_HELD: dict[str, list[int]] = {}


class RunDirLock:
    """Context manager holding a non-blocking `flock` on `run_dir/.lock`; a second process gets one line.

    The lock belongs to the open file, so the system releases it however the holder ends (SIGKILL
    included) and a stale `.lock` file never blocks anyone. The file records the holder's pid for
    the message. Nested use in one process (the CLI locks before it reads the checkpoint, the run
    locks again) shares the outer lock. File systems without locks get a warning, not a refusal.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._key = os.path.realpath(self.run_dir)

    def __enter__(self) -> RunDirLock:
        held = _HELD.get(self._key)
        if held is not None:
            held[1] += 1
            return self
        _HELD[self._key] = [self._acquire(), 1]
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        held = _HELD[self._key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self._key]
            os.close(held[0])  # closing the file releases the lock

    def _acquire(self) -> int:
        """Open and lock the lock file; its descriptor. A ConfigError when another process holds it."""
        path = self.run_dir / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise ConfigError(f"cannot lock run directory {self.run_dir} ({err.strerror}); it must exist and be "
                              "writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise ConfigError(f"run directory {self.run_dir} is in use by another relssl process (pid {holder}); "
                              "wait for it to end (or stop it), then try again") from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP: a file system without locks
            warnings.warn(f"cannot lock run directory {self.run_dir} ({err.strerror}); make sure no other relssl "
                          "process uses it", RelsslWarning, stacklevel=3)
        with contextlib.suppress(OSError):  # the pid is a courtesy for the message; a full disk must not stop us
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _read_pid(fd: int) -> str:
    """The pid the lock's holder wrote into the file, or 'unknown'."""
    with contextlib.suppress(OSError, ValueError):
        return str(int(os.pread(fd, 32, 0).decode().strip()))
    return "unknown"
