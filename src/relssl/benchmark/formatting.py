"""How numbers are written in the benchmark's reports and progress lines."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from relssl.benchmark.grid import PaperValue

NOT_RUN = "—"
UNKNOWN = "n/a"


def format_value(value: Any, digits: int = 2) -> str:
    """A number with `digits` decimals; anything missing as a dash."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return NOT_RUN


def format_mean_std(values: Sequence[float], expected: int | None = None, digits: int = 2) -> str:
    """'mean ± std' over seeds (sample std, n−1); one value alone; '(n=k)' when fewer than expected."""
    if not values:
        return NOT_RUN
    mean = statistics.fmean(values)
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {statistics.stdev(values):.{digits}f}"
    if expected is not None and len(values) < expected:
        text += f" (n={len(values)})"
    return text


def format_paper(value: PaperValue | None, digits: int = 2) -> str:
    """A published number as 'mean ± std' (or 'mean'), with no more decimals than it was given
    with (up to `digits`): the paper's '77%' stays 77, not 77.00. 'n/a' when not reported."""
    if value is None:
        return UNKNOWN

    def short(x: float) -> str:
        return f"{x:.{digits}f}".rstrip("0").rstrip(".")

    mean, std = value
    return short(mean) + (f" ± {short(std)}" if std is not None else "")
