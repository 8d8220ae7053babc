"""Everything a report shows, read from a run directory once; a missing or broken piece becomes a note, not an error.

The files are the ones `relssl train` and `relssl eval` write: `config.yaml`, `metrics.json`,
`train_log.csv` (step, epoch, elapsed_s, loss, method metrics), `monitor.csv` (epoch, step,
knn_top1), `diagnostics.csv` (epoch, step, per-method statistics), `retrieval.png` and `tsne.png`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relssl.errors import DataError

__all__ = ["RUN_FILES", "Columns", "RunData", "read_columns", "read_run"]

#: The files whose presence makes a folder a run directory.
RUN_FILES = ("config.yaml", "metrics.json", "train_log.csv")
#: Pictures embedded when present: file name -> section title.
PICTURES = {"retrieval.png": "Retrieval: queries and their nearest neighbours", "tsne.png": "t-SNE of the test features"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Columns = dict[str, list[float]]  # column name -> values (NaN where a row left it empty)


@dataclass
class RunData:
    """The pieces of one run directory; None where a piece is absent or unreadable (`notes` says which and why)."""

    run_dir: Path
    config_text: str | None = None
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    train_log: Columns | None = None
    monitor: Columns | None = None
    diagnostics: Columns | None = None
    pictures: dict[str, bytes] = field(default_factory=dict)  # file name -> PNG bytes
    notes: dict[str, str] = field(default_factory=dict)  # file name -> why it is not shown


def _number(text: str) -> float:
    """A CSV cell as a float; empty or unparsable cells are NaN (a gap in the chart)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_columns(path: Path) -> Columns:
    """A numeric CSV file with a header as {column: values}; rows of the wrong length (a write cut short) are skipped."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or not any(rows[0]):
        raise ValueError("no header line")
    header = [name.strip() for name in rows[0]]
    body = [row for row in rows[1:] if len(row) == len(header)]
    return {name: [_number(row[i]) for row in body] for i, name in enumerate(header)}


def _monitor_from_metrics(metrics: dict[str, Any] | None) -> Columns | None:
    """metrics.json's `monitor` list ([{"epoch", "step", "knn_top1"}, ...]) as columns, when monitor.csv is absent."""
    rows = (metrics or {}).get("monitor")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(k for k, v in row.items() if isinstance(v, (int, float))))
    return {name: [float(r.get(name, math.nan)) for r in rows] for name in names}


def _diagnostics_from_metrics(metrics: dict[str, Any] | None) -> Columns | None:
    """metrics.json's `diagnostics.per_epoch` list as columns, when diagnostics.csv is absent."""
    found = (metrics or {}).get("diagnostics")
    rows = found.get("per_epoch") if isinstance(found, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return _monitor_from_metrics({"monitor": rows})


def _read_csv(data: RunData, name: str, required: tuple[str, ...]) -> Columns | None:
    """Columns of RUN/name, or None with a note when it is absent, unreadable or lacks a required column."""
    path = data.run_dir / name
    if not path.is_file():
        return None
    try:
        columns = read_columns(path)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
        data.notes[name] = f"unreadable ({type(err).__name__}: {err})"
        return None
    missing = [c for c in required if c not in columns]
    if missing:
        data.notes[name] = f"has no column {', '.join(missing)} (columns: {', '.join(columns)})"
        return None
    if not next(iter(columns.values()), []):
        data.notes[name] = "has a header but no rows yet"
        return None
    return columns


def _read_config(data: RunData) -> None:
    path = data.run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        data.config_text = path.read_text(encoding="utf-8", errors="replace")
        loaded = yaml.safe_load(data.config_text)
    except OSError as err:
        data.notes["config.yaml"] = f"unreadable ({err.strerror or err})"
        return
    except yaml.YAMLError as err:
        data.notes["config.yaml"] = f"not valid YAML ({' '.join(str(err).split())[:200]})"
        return
    if isinstance(loaded, dict):
        data.config = loaded


def _read_metrics(data: RunData) -> None:
    path = data.run_dir / "metrics.json"
    if not path.is_file():
        return
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        data.notes["metrics.json"] = f"unreadable ({type(err).__name__}: {err})"
        return
    if isinstance(loaded, dict):
        data.metrics = loaded
    else:
        data.notes["metrics.json"] = "does not hold a JSON object"


def read_run(run_dir: str | Path) -> RunData:
    """Read a run directory; a path that is not a folder holding config.yaml, metrics.json or train_log.csv is a DataError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "does not exist"
        raise DataError(f"{run_dir} {what}: pass a run directory (runs/<run>) that relssl train wrote")
    if not any((run_dir / name).is_file() for name in RUN_FILES):
        raise DataError(f"{run_dir} is not a run directory: it holds none of {', '.join(RUN_FILES)} "
                        "(pass the folder relssl train printed as 'run directory')")
    data = RunData(run_dir)
    _read_config(data)
    _read_metrics(data)
    data.train_log = _read_csv(data, "train_log.csv", ("step", "loss"))
    for name, fallback in (("monitor.csv", _monitor_from_metrics), ("diagnostics.csv", _diagnostics_from_metrics)):
        columns = _read_csv(data, name, ("epoch",))
        if columns is None and (columns := fallback(data.metrics)) is not None:
            data.notes.pop(name, None)  # metrics.json's copy of the same record stands in for the file
        setattr(data, name.removesuffix(".csv"), columns)
    for name in PICTURES:
        path = run_dir / name
        if path.is_file():
            try:
                picture = path.read_bytes()
            except OSError as err:
                data.notes[name] = f"unreadable ({err.strerror or err})"
                continue
            if picture.startswith(PNG_SIGNATURE):
                data.pictures[name] = picture
            else:
                data.notes[name] = "is not a PNG image"
    return data
