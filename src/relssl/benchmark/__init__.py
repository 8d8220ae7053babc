"""The benchmark harness: a YAML grid of methods × datasets × backbones × seeds, run resumably,
reported as the papers' tables with the published numbers beside ours.

- `grid`: parse and validate grid files, expand them into cells (`load_grid`, `Grid`, `Cell`).
- `runner`: validate every cell's config, skip finished cells, run or resume the rest (`run_benchmark`).
- `report`: CSV of every run and markdown tables of mean ± std beside the paper (`write_reports`).

The command is `relssl benchmark` (relssl.benchmark_cli); the file format is documented in
docs/protocols/benchmark.md.
"""

from relssl.benchmark.formatting import format_mean_std, format_paper, format_value
from relssl.benchmark.grid import Axis, AxisValue, Cell, Grid, GridError, load_grid, parse_paper_value
from relssl.benchmark.report import cell_rows, markdown_report, write_reports
from relssl.benchmark.runner import (
    BenchmarkError,
    BenchmarkResult,
    PlannedCell,
    Runner,
    check_plan,
    grid_dir,
    plan_cells,
    run_benchmark,
    train_cell,
)

__all__ = [
    "Axis",
    "AxisValue",
    "BenchmarkError",
    "BenchmarkResult",
    "Cell",
    "Grid",
    "GridError",
    "PlannedCell",
    "Runner",
    "cell_rows",
    "check_plan",
    "format_mean_std",
    "format_paper",
    "format_value",
    "grid_dir",
    "load_grid",
    "markdown_report",
    "parse_paper_value",
    "plan_cells",
    "run_benchmark",
    "train_cell",
    "write_reports",
]
