"""The report's charts as inline SVG: the loss (raw and smoothed), the other logged metrics, the monitor, diagnostics.

Figures are drawn on ``matplotlib.figure.Figure`` with the SVG canvas, never through pyplot, so no
window opens and no global figure state is touched. Text becomes paths (no fonts needed to view
the page) and element ids are salted with the chart's name, so several SVGs in one page never share
an id and the same run gives the same bytes.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_svg import FigureCanvasSVG
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from relssl.report.run_data import Columns

__all__ = ["LOSS_COLOR", "MONITOR_COLOR", "diagnostics_chart", "loss_chart", "metric_charts", "monitor_chart",
           "smooth"]

LOSS_COLOR = "#e4572e"  # the smoothed loss; the page's screenshot test looks for it
RAW_COLOR = "#b8c0c8"  # the raw per-step loss behind it
MONITOR_COLOR = "#2e86ab"
METRIC_COLOR = "#6a4c93"
MAX_POINTS = 2000  # longer series are thinned (every n-th point) to keep the page small
LOG_AXES = ("step", "epoch", "elapsed_s")  # train_log.csv columns that are not metrics


def smooth(values: Sequence[float], span: int) -> list[float]:
    """Bias-corrected exponential moving average over `span` points (NaNs skipped), as TensorBoard smooths."""
    beta = 1.0 - 1.0 / max(span, 1)
    out, average, weight = [], 0.0, 0.0
    for value in values:
        if not math.isnan(value):
            average = beta * average + (1 - beta) * value
            weight = beta * weight + (1 - beta)
        out.append(average / weight if weight else math.nan)
    return out


def _thin(*series: Sequence[float]) -> list[list[float]]:
    """Every n-th point of equally long series, so that at most MAX_POINTS remain (the last one kept)."""
    n = len(series[0])
    stride = max(1, math.ceil(n / MAX_POINTS))
    keep = list(range(0, n, stride))
    if keep and keep[-1] != n - 1:
        keep.append(n - 1)
    return [[s[i] for i in keep] for s in series]


def _svg(fig: Figure, name: str) -> str:
    """The figure as an `<svg>` element (no XML prolog), ids salted with `name`."""
    FigureCanvasSVG(fig)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"relssl-report-{name}", "svg.fonttype": "path"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, facecolor="white", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):].strip()


def _style(ax: Axes, xlabel: str, ylabel: str) -> None:
    if xlabel in ("step", "epoch"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _epoch_starts(steps: Sequence[float], epochs: Sequence[float]) -> list[float]:
    """The steps at which a new epoch begins (for faint guide lines), when there are few enough to draw."""
    starts = [s for s, e, before in zip(steps[1:], epochs[1:], epochs[:-1], strict=True) if e != before]
    return starts if len(starts) <= 50 else []


def loss_chart(log: Columns) -> str:
    """Loss per step (thin grey) and its moving average (LOSS_COLOR), faint lines at epoch starts."""
    steps, loss = log["step"], log["loss"]
    span = max(5, len(loss) // 50)
    smoothed = smooth(loss, span)
    steps_shown, raw, smooth_shown = _thin(steps, loss, smoothed)
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot()
    if "epoch" in log:
        for start in _epoch_starts(steps, log["epoch"]):
            ax.axvline(start, color="#dddddd", linewidth=0.8, zorder=0)
    ax.plot(steps_shown, raw, color=RAW_COLOR, linewidth=0.8, label="loss per step")
    ax.plot(steps_shown, smooth_shown, color=LOSS_COLOR, linewidth=2.2, label=f"moving average ({span} steps)")
    _style(ax, "step", "loss")
    ax.legend(frameon=False, loc="upper right")
    return _svg(fig, "loss")


def _grid(count: int, width: float = 10.0, row_height: float = 2.6) -> tuple[Figure, list[Axes]]:
    """A figure with `count` small axes, three per row."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width, row_height * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(count)]


def metric_charts(log: Columns) -> str | None:
    """One small chart per extra train_log.csv column (pair accuracy, cosine, ...); None if there are none."""
    names = [c for c in log if c not in LOG_AXES and c != "loss" and any(not math.isnan(v) for v in log[c])]
    if not names:
        return None
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names, strict=True):
        steps, values = _thin(log["step"], log[name])
        ax.plot(steps, values, color=METRIC_COLOR, linewidth=0.9)
        _style(ax, "step", name)
    return _svg(fig, "metrics")


def monitor_chart(monitor: Columns) -> str | None:
    """The monitor's metrics (kNN top-1, ...) per epoch, one marked line each; None without a metric column."""
    x_name = "epoch" if "epoch" in monitor else "step"
    names = [c for c in monitor if c not in ("epoch", "step")]
    if not names or x_name not in monitor:
        return None
    fig = Figure(figsize=(10, 3.2))
    ax = fig.add_subplot()
    colors = [MONITOR_COLOR, METRIC_COLOR, LOSS_COLOR, "#3a7d44"]
    for i, name in enumerate(names):
        ax.plot(monitor[x_name], monitor[name], color=colors[i % len(colors)], linewidth=2.0, marker="o",
                markersize=4, label=name)
    _style(ax, x_name, "monitor (%)" if all(n.endswith(("top1", "top5")) for n in names) else "monitor")
    ax.legend(frameon=False, loc="lower right")
    return _svg(fig, "monitor")


def _groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Diagnostics columns grouped by name without their level suffix: clusters_l1..l3 -> clusters."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(re.sub(r"_l\d+$", "", name), []).append(name)
    return groups


def diagnostics_chart(diagnostics: Columns) -> str | None:
    """One small chart per diagnostic (one line per clustering level) against the epoch; None without columns."""
    x_name = "epoch" if "epoch" in diagnostics else "step"
    groups = _groups([c for c in diagnostics if c not in ("epoch", "step")])
    if not groups or x_name not in diagnostics:
        return None
    fig, axes = _grid(len(groups))
    cmap = matplotlib.colormaps["viridis"]
    for ax, (group, names) in zip(axes, groups.items(), strict=True):
        for i, name in enumerate(names):
            shade = cmap(i / max(len(names) - 1, 1) * 0.85)
            ax.plot(diagnostics[x_name], diagnostics[name], color=shade, linewidth=1.5, marker="o", markersize=3,
                    label=name.removeprefix(group).removeprefix("_") or group)
        _style(ax, x_name, group)
        if len(names) > 1:
            ax.legend(frameon=False, fontsize="x-small")
    return _svg(fig, "diagnostics")
