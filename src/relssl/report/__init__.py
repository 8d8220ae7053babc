"""`relssl report`: one self-contained HTML page describing a run directory (curves, results, pictures, config).

`read_run` gathers the run's files (`run_data`), `charts` draws them as SVG, `page` lays out the
HTML; `write_report` ties them together and writes the page atomically.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from relssl.errors import DataError
from relssl.report.page import render_page
from relssl.report.run_data import RunData, read_run

__all__ = ["REPORT_NAME", "RunData", "read_run", "render_page", "write_report"]

REPORT_NAME = "report.html"


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`; a failure leaves `path` as it was."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise DataError(f"cannot write the report {path} ({err.strerror or err}); pass --output FILE in a "
                        "writable folder") from None


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report of `run_dir` to `output` (default RUN_DIR/report.html) and return its path."""
    data = read_run(run_dir)
    path = Path(output) if output is not None else data.run_dir / REPORT_NAME
    _write_atomically(path, render_page(data))
    return path
