"""The trainer's progress: a bar on a terminal, else one plain line now and then.

A plain line is printed at a log flush (the only moments the metrics are on the host) when a
tenth of the run's steps or `every_s` seconds have passed since the last one, and at the end:

    train: step 140/330 (42%), epoch 7/15, loss 0.4123, 512 img/s, ETA 47.0s

so a redirected log stays short: about ten lines for a run of a few minutes (the quick digits
run), one a minute for a long one. Plain lines go to `write`, the run's log: printed by `relssl
train`, dropped or prefixed for the cells of a benchmark.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from relssl.progress import Progress, Show, format_duration, plain_line

__all__ = ["StepProgress"]


class StepProgress:
    """Shows the steps of one training session (from `initial` to `total`) as `show` asks."""

    def __init__(self, total: int, initial: int, *, batch_size: int, steps_per_epoch: int, show: Show,
                 every_s: float = 60.0, every_fraction: float = 0.1,
                 write: Callable[[str], None] = plain_line) -> None:
        self.total, self.initial, self.batch_size = total, initial, batch_size
        self._write = write
        self.steps_per_epoch = steps_per_epoch
        self.epochs = math.ceil(total / steps_per_epoch)
        self.every_s = every_s
        self.every_steps = max(1, math.ceil(total * every_fraction))
        self._bar = Progress(total, "train", "step", show=True, initial=initial) if show is True else None
        if self._bar is not None and self._bar.plain:  # stderr is not a terminal: lines instead of the bar
            self._bar = None
        self._lines = show is not False and self._bar is None
        self._started = time.perf_counter()
        self._last_time = self._started
        self._last_step: int | None = None

    def update(self) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)

    def flushed(self, step: int, values: dict[str, float], *, final: bool = False) -> None:
        """The log flushed at `step` with these metrics: the bar's postfix, or perhaps a plain line."""
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()})
            return
        if not self._lines or step == self._last_step:
            return
        now = time.perf_counter()
        due = (self._last_step is None or final or step - self._last_step >= self.every_steps
               or now - self._last_time >= self.every_s)
        if due:
            self._write(self.line(step, values, now))
            self._last_step, self._last_time = step, now

    def line(self, step: int, values: dict[str, float], now: float) -> str:
        """The plain progress line at `step`."""
        epoch = min(self.epochs, (step - 1) // self.steps_per_epoch + 1)
        parts = [f"train: step {step}/{self.total} ({100 * step // self.total}%)", f"epoch {epoch}/{self.epochs}"]
        parts += [f"{k} {v:.4g}" for k, v in values.items()]
        elapsed, done = now - self._started, step - self.initial
        if done > 0 and elapsed > 0:
            parts.append(f"{done * self.batch_size / elapsed:.0f} img/s")
            if step < self.total:
                parts.append(f"ETA {format_duration((self.total - step) * elapsed / done)}")
        return ", ".join(parts)

    def write(self, text: str) -> None:
        """A message between the progress updates."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            self._write(text)

    def close(self) -> None:
        """Close the bar, if there is one."""
        if self._bar is not None:
            self._bar.close()
