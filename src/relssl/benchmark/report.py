"""Benchmark reports: one CSV row per cell run, and markdown tables of mean ± std beside the paper.

Both are rebuilt from the run folders on disk, so a report after an interrupted or resumed
session shows everything finished so far.
"""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from relssl.benchmark.cells import PlannedCell, flat_metrics, read_metrics
from relssl.benchmark.formatting import NOT_RUN, UNKNOWN, format_mean_std, format_paper
from relssl.benchmark.grid import Grid, table_labels, table_title

RANDOM_PREFIX = "random_init_"
ID_FIELDS = ("grid", "scale", "cell_id", "run_name")
STATUS_FIELDS = ("status", "table_metric", "run_dir", "source_run", "error")


def numeric_items(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric (non-boolean) entries of a flattened metrics dict."""
    return {k: v for k, v in flat_metrics(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def cell_rows(grid: Grid, planned: Sequence[PlannedCell]) -> list[dict[str, Any]]:
    """One row per cell run: identifying fields, status, and every numeric metric found on disk.

    A random-init cell reports its donor's `random_init_*` metrics under the plain names.
    """
    by_name = {pc.name: pc for pc in planned}
    axis_names = [a.name for a in grid.axes]
    rows = []
    for pc in planned:
        cell = pc.cell
        row: dict[str, Any] = {"grid": grid.name, "scale": grid.scale, "cell_id": cell.cell_id,
                               "run_name": cell.run_name, **{a: cell.labels[a] for a in axis_names}}
        metrics: dict[str, float] = {}
        source, error = "", pc.error
        if cell.random_init:
            donor = by_name[cell.donor] if cell.donor else None
            source = str(donor.run_dir) if donor else ""
            found = read_metrics(donor.run_dir) if donor else None
            if found and found.get("finished") is True:
                metrics = {k[len(RANDOM_PREFIX):]: v for k, v in numeric_items(found).items()
                           if k.startswith(RANDOM_PREFIX)}
            status = "done" if cell.metric in metrics else ("failed" if donor and donor.error else "not run")
            error = error or (donor.error if donor else "")
            run_dir = ""
        else:
            found = read_metrics(pc.run_dir)
            finished = bool(found and found.get("finished") is True)
            if finished and found is not None:
                metrics = numeric_items(found)
            if finished and cell.metric in metrics:
                status = "done"
            elif pc.error:
                status = "failed"
            elif pc.run_dir.exists():
                status = "incomplete"
            else:
                status = "not run"
            run_dir = str(pc.run_dir)
        row.update(status=status, table_metric=cell.metric, run_dir=run_dir, source_run=source, error=error)
        for key, value in metrics.items():
            if key not in row:
                row[key] = value
        rows.append(row)
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path, grid: Grid) -> Path:
    """Write the rows; columns: identifying fields, axes, status fields, grid metrics, other metrics."""
    fixed = [*ID_FIELDS, *(a.name for a in grid.axes), *STATUS_FIELDS]
    metric_keys = sorted({k for r in rows for k in r if k not in fixed})
    ordered = [m for m in grid.metrics if m in metric_keys] + [k for k in metric_keys if k not in grid.metrics]
    # Grid metrics always get a column, even before any cell has finished.
    ordered = list(dict.fromkeys([*grid.metrics, *ordered]))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*fixed, *ordered], restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)
    return path


def markdown_report(grid: Grid, rows: Sequence[Mapping[str, Any]], command: str | None = None) -> str:
    """The grid's tables: rows × columns of mean ± std over seeds, the paper's number beside each."""
    seeds = grid.seed_axis.labels
    lines = [f"# {grid.name} — scale `{grid.scale}`", ""]
    if grid.description:
        lines += [grid.description, ""]
    if grid.scale_note:
        lines += [f"**Scale `{grid.scale}`:** {grid.scale_note}", ""]
    others = [a for a in grid.axes
              if a.name != "seed" and a.name not in grid.rows and a.name not in grid.columns and len(a.values) > 1]
    row_labels = table_labels(grid, grid.rows)
    col_labels = table_labels(grid, grid.columns)
    done = [r for r in rows if r["status"] == "done"]
    for m_index, metric in enumerate(grid.metrics):
        primary = m_index == 0
        keys = sorted({r["table_metric"] for r in rows}) if primary else [metric]
        lines += [f"## {metric}" + (f" (cells use {', '.join(keys)})" if keys != [metric] else ""), ""]
        for combo in itertools.product(*(a.values for a in others)):
            fixed = {a.name: v.label for a, v in zip(others, combo)}
            if fixed:
                lines += ["### " + ", ".join(f"{a.name} = {v.title}" for a, v in zip(others, combo)), ""]
            subset = [r for r in done if all(r[k] == v for k, v in fixed.items())]
            lines += _table(grid, subset, metric, row_labels, col_labels, len(seeds), primary)
            lines.append("")
            if primary and grid.baseline:
                lines += _drop_table(grid, subset, row_labels, col_labels, len(seeds))
                lines.append("")
    lines += [
        (f"Ours: mean ± sample standard deviation (n−1) over seeds {', '.join(seeds)}; (n=k) where only k finished; "
         if len(seeds) > 1 else f"Ours: one run (seed {seeds[0]}); ")
        + f"{NOT_RUN} = no result yet (or the runs do not report it). paper: the published number; {UNKNOWN} = not reported.",
        "",
    ]
    if grid.paper_note:
        lines += [f"Paper numbers: {grid.paper_note}", ""]
    finished = sum(r["status"] == "done" for r in rows)
    lines.append(f"{finished} of {len(rows)} cell runs finished. Grid file: `{grid.path}`; one row per run in "
                 f"`results.csv`. Written {time.strftime('%Y-%m-%d %H:%M')}" + (f" by `{command}`." if command else "."))
    return "\n".join(lines) + "\n"


def _table(grid: Grid, rows: Sequence[Mapping[str, Any]], metric: str, row_labels: Sequence[str],
           col_labels: Sequence[str], expected: int, primary: bool) -> list[str]:
    """One markdown table; the primary metric reads each row's `table_metric` and shows the paper."""
    header = [" / ".join(grid.rows)]
    for col in col_labels:
        title = table_title(grid, grid.columns, col)
        header += [title, "paper"] if primary else [title]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in row_labels:
        cells = [table_title(grid, grid.rows, row)]
        for col in col_labels:
            here = [r for r in rows if grid.row_label(r) == row and grid.column_label(r) == col]
            values = [float(r[k]) for r in here if (k := r["table_metric"] if primary else metric) in r]
            cells.append(format_mean_std(values, expected))
            if primary:
                cells.append(format_paper(grid.paper.get(row, {}).get(col)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _drop_table(grid: Grid, rows: Sequence[Mapping[str, Any]], row_labels: Sequence[str],
                col_labels: Sequence[str], expected: int) -> list[str]:
    """The headline metric's drop from the baseline: baseline minus cell, paired by seed, mean ± std."""
    assert grid.baseline is not None  # only called for grids with a baseline
    axis, reference = grid.baseline
    title = grid.axis(axis).title(reference)
    value = {(grid.row_label(r), grid.column_label(r), r["seed"]): float(r[r["table_metric"]])
             for r in rows if r["table_metric"] in r}

    def partner(label: str, axes: Sequence[str]) -> str:
        parts = label.split("/")
        return "/".join(reference if a == axis else p for a, p in zip(axes, parts))

    out = [f"Drop from {title} ({axis} = {reference}): its value minus each cell's, per seed; "
           "positive = worse without it.", ""]
    out += ["| " + " | ".join([" / ".join(grid.rows), *(table_title(grid, grid.columns, c) for c in col_labels)]) + " |",
            "|" + "---|" * (1 + len(col_labels))]
    for row in row_labels:
        cells = [table_title(grid, grid.rows, row)]
        for col in col_labels:
            ref = (partner(row, grid.rows), partner(col, grid.columns))
            drops = [value[ref + (seed,)] - v for (r, c, seed), v in value.items()
                     if (r, c) == (row, col) and ref + (seed,) in value]
            cells.append(format_mean_std(drops, expected))
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_reports(grid: Grid, planned: Sequence[PlannedCell], out_dir: Path,
                  command: str | None = None) -> tuple[Path, Path]:
    """Write `results.csv` and `results.md` into `out_dir`; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = cell_rows(grid, planned)
    csv_path = write_csv(rows, out_dir / "results.csv", grid)
    md_path = out_dir / "results.md"
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(markdown_report(grid, rows, command))
    tmp.replace(md_path)
    return csv_path, md_path
