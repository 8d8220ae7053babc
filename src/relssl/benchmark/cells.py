"""A planned cell of a benchmark run and what its run folder holds (shared by the runner and the reports)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relssl.benchmark.grid import Cell, Grid
from relssl.dicts import flatten
from relssl.train.config import RunConfig

__all__ = ["PlannedCell", "flat_metrics", "grid_dir", "read_metrics"]


@dataclass
class PlannedCell:
    """A cell with its run directory, validated config and state on disk.

    state: `done` (finished, skipped), `resume` (has last.pt), `new`, `restart` (a folder with
    nothing to resume; moved aside before running), `derived` (random init, read from the donor),
    `unselected` (left out by --only), `invalid` (config error; see `problem`).
    """

    cell: Cell
    run_dir: Path
    config: RunConfig | None = None
    state: str = "new"
    problem: str = ""
    error: str = ""  # failure of this session's run
    seconds: float | None = None

    @property
    def name(self) -> str:
        return self.cell.run_name


def grid_dir(grid: Grid, output_root: str | Path) -> Path:
    """`<output root>/<grid name>/<scale>`: the cells' run folders and the reports."""
    return Path(output_root) / grid.name / grid.scale


def read_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json, or None when absent or unreadable."""
    try:
        data = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def flat_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json with nested sections flattened to dotted keys (e.g. linear_protocol.epochs)."""
    return flatten(metrics)
