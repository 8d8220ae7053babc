"""Stopping a run cleanly: Ctrl-C (SIGINT) or a scheduler's SIGTERM asks for a checkpoint and an exit."""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Any

__all__ = ["StopRequest"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """While active, the first SIGINT or SIGTERM sets `requested`; a second one aborts (KeyboardInterrupt).

    SLURM and other schedulers send SIGTERM some time before they kill a job; the trainer stops
    at the next point every rank agrees on, writes a checkpoint and exits, so `--resume` continues.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
