"""RUN/loss.png: the training loss against the step (raw and smoothed) and the kNN monitor beside it.

Read from the run's own files (train_log.csv, monitor.csv), so the picture of a stopped and resumed
run shows the whole history. Drawn on a bare Agg figure: no window, no pyplot state.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from relssl.files import atomic_write
from relssl.train.checkpoint import write_error

__all__ = ["read_columns", "smooth", "write_loss_plot"]


def read_columns(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The named numeric columns of a CSV file (rows with a missing or bad value skipped); None if unreadable."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, csv.Error):
        return None
    values: dict[str, list[float]] = {name: [] for name in names}
    for row in rows:
        try:
            parsed = [float(row[name]) for name in names]
        except (KeyError, TypeError, ValueError):
            continue
        for name, value in zip(names, parsed):
            values[name].append(value)
    return {name: np.asarray(column) for name, column in values.items()}


def smooth(values: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """A centred moving average over `fraction` of the points (at least 1), the ends averaged over what exists."""
    window = max(1, int(len(values) * fraction)) | 1  # odd, so it centres
    if window == 1:
        return values.astype(float)
    kernel = np.ones(window)
    sums = np.convolve(values, kernel, mode="same")
    counts = np.convolve(np.ones(len(values)), kernel, mode="same")
    return sums / counts


def write_loss_plot(run_dir: Path) -> Path | None:
    """Draw RUN/loss.png from train_log.csv (and monitor.csv when present); None when there is no loss yet."""
    log = read_columns(run_dir / "train_log.csv", ("step", "loss"))
    if log is None or len(log["step"]) == 0:
        return None
    monitor = read_columns(run_dir / "monitor.csv", ("step", "knn_top1"))
    has_monitor = monitor is not None and len(monitor["step"]) > 0
    fig = Figure(figsize=(10 if has_monitor else 6.5, 4), layout="constrained")
    axes = fig.subplots(1, 2 if has_monitor else 1, squeeze=False)[0]
    loss = axes[0]
    loss.plot(log["step"], log["loss"], color="#1f77b4", alpha=0.25, linewidth=0.8, label="loss")
    loss.plot(log["step"], smooth(log["loss"]), color="#1f77b4", linewidth=2.0, label="smoothed")
    loss.set(xlabel="step", ylabel="training loss", title="training loss")
    loss.grid(alpha=0.3)
    loss.legend(loc="upper right", frameon=False)
    if has_monitor:
        assert monitor is not None
        knn = axes[1]
        knn.plot(monitor["step"], monitor["knn_top1"], color="#d62728", marker="o", linewidth=1.5)
        knn.set(xlabel="step", ylabel="kNN top-1 (%)", title="kNN monitor (evaluation split)")
        knn.grid(alpha=0.3)
    path = run_dir / "loss.png"
    FigureCanvasAgg(fig)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png", facecolor="white"), write_error,
                 mode=0o644)
    return path
