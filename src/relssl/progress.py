"""Progress of a long loop: a tqdm bar on a terminal, a few plain lines when stderr is redirected.

A redirected log should read well: no carriage returns, no redraws. Every loop that shows its
progress goes through `Progress` (or `track` for an iterable), which picks the display once:

- ``show=True``: a bar when stderr is a terminal (or a notebook's widget bar), else plain lines;
- ``"lines"``: plain lines even on a terminal (``relssl train --no-progress``);
- ``False``: nothing.

Plain lines are sparse: one when the loop ends (count, time, rate and the last postfix), and in
between at most one every `every_s` seconds. They go to stdout with a run's other log lines (and
flushed at once), which keeps them in order in a redirected log and leaves stderr to warnings and
the one-line errors.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TypeVar

from tqdm import tqdm
from tqdm.auto import tqdm as tqdm_auto

__all__ = ["Progress", "Show", "format_duration", "plain_line", "stderr_is_terminal", "track"]

T = TypeVar("T")
Show = bool | Literal["lines"]


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (bars redraw there; anywhere else they would pile up)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel, whose stderr is no terminal but shows tqdm's widget bars."""
    return "ipykernel" in sys.modules


def plain_line(text: str) -> None:
    """Print one line to stdout at once, never a carriage return (a run's default log: `tail -f` sees it)."""
    sys.stdout.write(text.replace("\r", " ") + "\n")
    sys.stdout.flush()


def format_duration(seconds: float) -> str:
    """A short human duration: 4.2s, 3m05s, 2h07m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """Counts the work of one loop and shows it as `show` asks (see the module docstring)."""

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", *, show: Show = True,
                 initial: int = 0, unit_scale: bool = False, every_s: float = 60.0) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = initial
        self.every_s = every_s
        self.postfix = ""
        self._initial = initial
        notebook = show is True and not stderr_is_terminal() and _in_notebook()
        self._lines = show == "lines" or (show is True and not stderr_is_terminal() and not notebook)
        self._bar: Any = None
        if show is True and not self._lines:
            bar = tqdm_auto if notebook else tqdm
            self._bar = bar(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                            dynamic_ncols=True)
        self._started = self._last_line = time.perf_counter()
        self._closed = False

    @property
    def plain(self) -> bool:
        """Whether this loop reports in plain lines."""
        return self._lines

    def update(self, n: int = 1) -> None:
        """Count `n` more units done; a plain line when `every_s` seconds passed since the last one."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._lines and time.perf_counter() - self._last_line >= self.every_s:
            self._emit()

    def set_postfix(self, values: dict[str, Any]) -> None:
        """Values shown after the count (a bar shows them at its next redraw, never forcing one)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self._bar is not None:
            self._bar.write(text)  # to stdout, the bar on stderr cleared and redrawn around it
        else:
            plain_line(text)

    def _amount(self, n: float) -> str:
        if self.unit_scale:
            return str(tqdm.format_sizeof(n))
        return f"{n:.0f}" if n >= 100 or n == int(n) else f"{n:.3g}"

    def status(self) -> str:
        """The progress as one line of text: count (of total), time, rate, postfix."""
        elapsed = time.perf_counter() - self._started
        count = self._amount(self.n) + (f"/{self._amount(self.total)}" if self.total else "")
        unit = self.unit if self.unit_scale else f" {self.unit}"  # 12.3M/170MB and 2.61MB/s, but 30/30 img
        parts = [f"{count}{unit}", format_duration(elapsed)]
        done = self.n - self._initial
        if done > 0 and elapsed > 0:
            parts.append(f"{self._amount(done / elapsed)}{unit}/s")
        if not self._closed and self.total and done > 0 and self.n < self.total:
            parts.append(f"ETA {format_duration((self.total - self.n) * elapsed / done)}")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts)

    def _emit(self) -> None:
        plain_line(self.status())
        self._last_line = time.perf_counter()

    def close(self) -> None:
        """End the display: the bar closes; plain lines end with one summary line."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._lines:
            self._emit()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it",
          show: Show = True, every_s: float = 60.0) -> Iterator[T]:
    """Yield from `iterable`, counting each item in a `Progress` (closed when the loop ends or breaks)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if show is False:
        yield from iterable
        return
    with Progress(total, desc, unit, show=show, every_s=every_s) as progress:
        for item in iterable:
            yield item
            progress.update()
