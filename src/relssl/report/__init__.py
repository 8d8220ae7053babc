"""`relssl report`: one self-contained HTML page describing a run directory (curves, results, pictures, config).

`read_run` gathers the run's files (`run_data`), `charts` draws them as SVG, `page` lays out the
HTML; `write_report` ties them together and writes the page atomically.
"""

from __future__ import annotations

from pathlib import Path

from relssl.errors import DataError
from relssl.files import atomic_write
from relssl.report.page import render_page
from relssl.report.run_data import RunData, read_run

__all__ = ["REPORT_NAME", "RunData", "read_run", "render_page", "write_report"]

REPORT_NAME = "report.html"


def _report_error(path: Path, err: BaseException) -> DataError:
    """The one-line error of a refused report write."""
    detail = err.strerror if isinstance(err, OSError) and err.strerror else err
    return DataError(f"cannot write the report {path} ({detail}); pass --output FILE in a writable folder")


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (readable by all); a failure leaves `path` as it was."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write, _report_error, mode=0o644)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `output` (default RUN_DIR/report.html) and return its path."""
    data = read_run(run_dir)
    path = Path(output) if output is not None else data.run_dir / REPORT_NAME
    _write_atomically(path, render_page(data))
    return path
