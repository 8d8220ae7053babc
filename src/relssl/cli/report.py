"""`relssl report RUN_DIR`: one self-contained HTML page of a run (curves, results, pictures, config)."""

from __future__ import annotations

import argparse

from relssl.cli.options import RAW, wrap
from relssl.report import REPORT_NAME, write_report

__all__ = ["add_parser", "run"]

EPILOG = f"""\
examples:
  relssl report runs/RUN_DIR                        # writes runs/RUN_DIR/{REPORT_NAME}
  relssl report runs/RUN_DIR --output ~/run.html    # anywhere else

The page needs no other file and no network: CSS inline, charts as inline SVG, retrieval.png and
tsne.png embedded. A piece the run lacks (no metrics.json yet, no monitor.csv, no pictures) is
named on the page with the command that makes it. Make the pictures first with
`relssl eval retrieval --checkpoint RUN_DIR` and `relssl eval tsne --checkpoint RUN_DIR`.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `report` to the `relssl` sub-commands."""
    p = sub.add_parser(
        "report", help="write one self-contained HTML page describing a run",
        description=wrap("Write an HTML report of a run directory: the run summary (method, backbone, dataset, "
                         "steps, time, finished or stopped), the loss curve (raw and smoothed) and the other "
                         "logged metrics, the kNN monitor, evaluation results beside the random-init baseline, "
                         "method diagnostics, the retrieval grid and t-SNE pictures, and the full config."),
        epilog=EPILOG, formatter_class=RAW,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory relssl train wrote (runs/<run>)")
    p.add_argument("--output", metavar="FILE", help=f"where to write the page (default RUN_DIR/{REPORT_NAME})")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Write the report and print where it went."""
    path = write_report(args.run_dir, args.output)
    print(f"report: {path}")
    return 0
