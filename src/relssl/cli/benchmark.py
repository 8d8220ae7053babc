"""`relssl benchmark`: run a grid of methods × datasets × backbones × seeds and print the paper's table."""

from __future__ import annotations

import argparse
import shlex
import sys

from relssl.benchmark import check_plan, grid_dir, load_grid, plan_cells, run_benchmark, write_reports
from relssl.cli.options import RAW, parse_sets

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  RELSSL_CIFAR10=DIR relssl benchmark --config configs/benchmarks/table1_smoke_cifar10.yaml
  relssl benchmark --config configs/benchmarks/table1_paper.yaml --scale paper --set train.device=cuda
  relssl benchmark --config GRID --list                  # validate every cell and show what is done
  relssl benchmark --config GRID --only 'relational_*'   # a subset of the cells (glob on run names)
  relssl benchmark --config GRID --report-only           # rebuild results.csv / results.md from disk

Runs go to OUTPUT/<grid name>/<scale>/<cell id>-seed<k>/; finished cells are skipped, stopped ones
resume, so running the same command again continues an interrupted benchmark. The reports are
OUTPUT/<grid name>/<scale>/results.csv (one row per run) and results.md (mean ± std over seeds,
the paper's number beside ours). Grid file format: docs/protocols/benchmark.md.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `benchmark` to the `relssl` sub-commands."""
    p = sub.add_parser(
        "benchmark", help="run a grid of runs and print the paper's table beside ours",
        description="Run every cell of a benchmark grid (YAML: methods x datasets or protocols x "
        "backbones x seeds), skipping finished cells, then write a CSV of all runs and a markdown "
        "table of mean ± std over seeds with the published numbers beside ours.",
        epilog=EPILOG, formatter_class=RAW,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="benchmark grid YAML (see configs/benchmarks/)")
    p.add_argument("--scale", help="one of the grid's scales, e.g. smoke or paper (default: the grid's default_scale, else its first)")
    p.add_argument("--output", default="benchmarks_out", metavar="DIR", help="parent of the grids' run folders (default ./benchmarks_out)")
    p.add_argument("--only", action="append", default=[], metavar="GLOB",
                   help="run only cells whose run name matches (repeatable); the report still shows every cell")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config key in every cell, e.g. --set train.device=cuda (repeatable)")
    p.add_argument("--device", help="shortcut for --set train.device=DEVICE")
    p.add_argument("--keep-going", action="store_true", help="after a failed cell, go on with the others")
    p.add_argument("--list", action="store_true", help="validate every cell, show its state, run nothing")
    p.add_argument("--report-only", action="store_true", help="write the reports from finished runs, run nothing")
    p.add_argument("-v", "--verbose", action="store_true", help="show each run's log lines and progress bars")
    p.set_defaults(run=run, interrupt_hint="run the same command again to continue")
    return p


def run(args: argparse.Namespace) -> int:
    """Execute parsed `relssl benchmark` arguments. Exit status: 0 ok, 1 a cell failed, 130 stopped."""
    grid = load_grid(args.config, args.scale)
    sets = parse_sets(args.sets)
    if args.device:
        sets["train.device"] = args.device
    command = "relssl benchmark " + " ".join(shlex.quote(a) for a in ["--config", args.config, "--scale", grid.scale])
    if args.list or args.report_only:
        planned = plan_cells(grid, args.output, sets=sets, only=args.only)
        if args.report_only:
            csv_path, md_path = write_reports(grid, planned, grid_dir(grid, args.output), command)
            print(md_path.read_text(), end="")
            print(f"\nwrote {csv_path} and {md_path}")
            return 0
        for pc in planned:
            extra = f"  <- {pc.cell.donor} (random init)" if pc.cell.donor else ""
            print(f"{pc.state:10s} {pc.name}{extra}" + (f"\n           {pc.problem}" if pc.problem else ""))
        print(f"{len(planned)} cells; runs under {grid_dir(grid, args.output)}")
        check_plan(planned)
        return 0
    result = run_benchmark(grid, args.output, sets=sets, only=args.only, keep_going=args.keep_going,
                           verbose=args.verbose, command=command)
    assert result.markdown_path is not None
    print()
    print(result.markdown_path.read_text(), end="")
    print(f"\nran {len(result.ran)}, skipped {len(result.skipped)} finished, {len(result.failed)} failed; "
          f"reports: {result.csv_path}, {result.markdown_path}")
    if result.interrupted:
        print("stopped early; run the same command again to continue", file=sys.stderr)
        return 130
    return 1 if result.failed else 0
