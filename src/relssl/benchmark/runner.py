"""Run a grid's cells: validate every config first, skip finished cells, resume or start the rest.

A cell is finished when `<run dir>/metrics.json` says `"finished": true` and holds the grid's
metrics. A cell whose run stopped part-way resumes from its `last.pt`; a run folder with nothing
to resume from is moved aside (never deleted). A finished cell whose saved config differs from
what the grid now asks for stops the benchmark before anything runs, so a table never mixes
stale numbers with new ones.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relssl.benchmark.cells import PlannedCell, flat_metrics, grid_dir, read_metrics
from relssl.benchmark.formatting import format_paper, format_value
from relssl.benchmark.grid import Cell, Grid
from relssl.benchmark.report import write_reports
from relssl.dicts import flatten
from relssl.errors import CheckpointError, ConfigError
from relssl.progress import Progress
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import RunConfig, build_config
from relssl.train.lock import RunDirLock
from relssl.train.run import run_training

Log = Callable[[str], None]
Runner = Callable[[RunConfig, Path, Log], dict[str, Any]]
"""Runs one cell: `(config, run_dir, log) -> metrics`. It must leave `run_dir/metrics.json` behind.

`config.train.runs_dir / config.train.run_name` is `run_dir`, which either does not exist yet or
holds a `last.pt` to resume from.
"""

# Keys that may differ between a finished run and the grid without changing its numbers.
IGNORED_CONFIG_KEYS = frozenset({
    "train.progress", "train.device", "train.backend", "train.log_every", "train.runs_dir", "train.run_name",
    "train.checkpoint_every", "train.checkpoint_every_steps", "train.keep_periodic",
    "data.root", "data.cache_dir", "data.download", "eval.feature_batch_size",
})
MAX_LISTED_PROBLEMS = 20


class BenchmarkError(ConfigError):
    """The grid cannot run as asked (invalid cells, or finished runs made with another config)."""


@dataclass
class BenchmarkResult:
    """What a benchmark session did and where its reports are."""

    cells: list[PlannedCell]
    out_dir: Path
    csv_path: Path | None = None
    markdown_path: Path | None = None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    interrupted: bool = False


def missing_metrics(cell: Cell, metrics: Mapping[str, Any] | None) -> list[str]:
    """The cell's table metric (and its random_init_ twin for a donor) when absent from `metrics`.

    The grid's further metrics are optional: a cell that does not produce one shows a dash.
    """
    wanted = [cell.metric]
    if cell.overrides.get("eval.compare_random"):
        wanted.append(f"random_init_{cell.metric}")
    flat = flat_metrics(metrics or {})
    return [m for m in wanted if m not in flat]


def is_finished(cell: Cell, run_dir: Path) -> bool:
    """metrics.json says finished and holds the cell's table metric."""
    metrics = read_metrics(run_dir)
    return bool(metrics and metrics.get("finished") is True and cell.metric in flat_metrics(metrics))


def config_differences(saved: Mapping[str, Any], config: RunConfig) -> list[str]:
    """`key: saved -> now` for every setting that differs (keys in IGNORED_CONFIG_KEYS aside)."""
    old, new = flatten(saved), flatten(config.to_dict())
    diffs = []
    for key in sorted(set(old) & set(new)):
        if key in IGNORED_CONFIG_KEYS:
            continue
        a, b = old[key], new[key]
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        if a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    return diffs


def _saved_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def plan_cells(grid: Grid, output_root: str | Path, *, sets: Mapping[str, Any] | None = None,
               only: Sequence[str] = (), progress: bool = False) -> list[PlannedCell]:
    """Every cell with its run folder; selected trainable cells get a validated config and a state.

    `sets` are dotted overrides applied to every cell after the grid's own; `only` keeps the
    cells whose run name matches one of the glob patterns (and the donors they need).
    """
    out = grid_dir(grid, output_root)
    cells = grid.cells()
    selected = {c.run_name for c in cells if not only or any(fnmatch.fnmatchcase(c.run_name, p) for p in only)}
    selected |= {c.donor for c in cells if c.run_name in selected and c.donor}
    planned = []
    for cell in cells:
        pc = PlannedCell(cell, out / cell.run_name)
        if cell.run_name not in selected:
            pc.state = "unselected"
        elif cell.random_init:
            pc.state = "derived"
        else:
            _validate_cell(grid, pc, out, sets or {}, progress)
        planned.append(pc)
    return planned


def _validate_cell(grid: Grid, pc: PlannedCell, out: Path, sets: Mapping[str, Any], progress: bool) -> None:
    overrides = {"train.progress": progress, **pc.cell.overrides, **sets,
                 "seed": pc.cell.seed, "train.runs_dir": str(out), "train.run_name": pc.cell.run_name}
    try:
        pc.config = build_config(grid.base, overrides)
    except ConfigError as err:
        pc.state, pc.problem = "invalid", str(err)
        return
    run_dir = pc.run_dir
    if is_finished(pc.cell, run_dir):
        pc.state = "done"
        saved = _saved_config(run_dir)
    elif (run_dir / "last.pt").is_file():
        pc.state = "resume"
        saved = _checkpoint_config(run_dir)
    else:
        pc.state = "restart" if run_dir.exists() else "new"
        return
    if saved is not None:
        diffs = config_differences(saved, pc.config)
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            pc.state = "invalid"
            pc.problem = (f"{run_dir} was run with a different config ({'; '.join(diffs[:3])}{more}); "
                          "delete or move that folder to run the cell again, or restore the grid")
    if pc.state == "done":
        missing = missing_metrics(pc.cell, read_metrics(run_dir))
        if missing:
            pc.state = "invalid"
            pc.problem = (f"{run_dir}/metrics.json is finished but lacks {', '.join(missing)}; "
                          "delete that folder to run the cell again")


def _checkpoint_config(run_dir: Path) -> dict[str, Any] | None:
    try:
        return load_checkpoint(run_dir / "last.pt")["config"]
    except (CheckpointError, KeyError, TypeError):  # an unreadable checkpoint shows up when the run resumes, with its own message
        return _saved_config(run_dir)


def check_plan(planned: Iterable[PlannedCell]) -> None:
    """Raise BenchmarkError listing every invalid selected cell (all of them, before any run)."""
    bad = [pc for pc in planned if pc.state == "invalid"]
    if not bad:
        return
    lines = [f"  {pc.name}: {pc.problem}" for pc in bad[:MAX_LISTED_PROBLEMS]]
    if len(bad) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_PROBLEMS} more")
    raise BenchmarkError(f"{len(bad)} cell(s) cannot run; nothing was started:\n" + "\n".join(lines))


def train_cell(config: RunConfig, run_dir: Path, log: Log) -> dict[str, Any]:
    """The default runner: `relssl train` for one cell, resuming from `run_dir/last.pt` if present."""
    if (run_dir / "last.pt").is_file():
        checkpoint = load_checkpoint(run_dir / "last.pt")
        _, metrics = run_training(config, checkpoint=checkpoint, run_dir=run_dir, log=log)
    else:
        _, metrics = run_training(config, log=log)
    return metrics


def _in_use(run_dir: Path) -> str | None:
    """The lock's message when another process holds `run_dir`'s run lock, else None (also for a new cell)."""
    if not run_dir.is_dir():
        return None
    try:
        with RunDirLock(run_dir):
            return None
    except ConfigError as err:
        return str(err)


def move_aside(run_dir: Path) -> Path:
    """Rename a run folder that has nothing to resume to `<name>.incomplete[-n]`; return the new path."""
    target = run_dir.with_name(run_dir.name + ".incomplete")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.incomplete-{n}")
    run_dir.rename(target)
    return target


def run_benchmark(grid: Grid, output_root: str | Path, *, runner: Runner = train_cell,
                  sets: Mapping[str, Any] | None = None, only: Sequence[str] = (), keep_going: bool = False,
                  verbose: bool = False, echo: Log | None = None, report: bool = True,
                  command: str | None = None) -> BenchmarkResult:
    """Validate every selected cell, then run the unfinished ones in grid order and write the reports.

    The reports (CSV + markdown, see relssl.benchmark.report) are written at the end, also after
    a failure or Ctrl-C. A failing cell stops the session (its exception is re-raised) unless
    `keep_going`; a run stopped by Ctrl-C (metrics `finished: false`) stops it with
    `interrupted` set. `verbose` shows each run's own log lines and progress bars.
    """
    planned = plan_cells(grid, output_root, sets=sets, only=only, progress=verbose)
    check_plan(planned)
    result = BenchmarkResult(planned, grid_dir(grid, output_root))
    todo = [pc for pc in planned if pc.state in ("new", "resume", "restart")]
    bar = Progress(len(todo), f"{grid.name} [{grid.scale}]", "cell", show=True)
    say = echo or bar.write
    for pc in planned:
        if pc.state == "done":
            result.skipped.append(pc.name)
            say(f"skip {pc.name}: already finished ({_result_text(pc)})")
    try:
        for i, pc in enumerate(todo, 1):
            assert pc.config is not None
            bar.set_postfix({"cell": pc.name})
            busy = _in_use(pc.run_dir)
            if busy:  # another benchmark or `relssl train` is writing there: never move or resume it
                result.failed.append(pc.name)
                pc.error = busy
                say(f"[{i}/{len(todo)}] {pc.name}: skipped: {busy}")
                bar.update()
                continue
            if pc.state == "restart":
                moved = move_aside(pc.run_dir)
                say(f"{pc.name}: {pc.run_dir} had nothing to resume; moved to {moved.name}")
            log = _cell_log(say, pc.name) if verbose else _quiet
            t0 = time.perf_counter()
            try:
                metrics = runner(pc.config, pc.run_dir, log)
            except Exception as err:  # noqa: BLE001 - recorded, reported, re-raised unless keep_going
                pc.seconds = time.perf_counter() - t0
                pc.error = f"{type(err).__name__}: {err}"
                result.failed.append(pc.name)
                say(f"[{i}/{len(todo)}] {pc.name}: FAILED after {pc.seconds:.0f}s: {pc.error}")
                if not keep_going:
                    raise
                bar.update()
                continue
            pc.seconds = time.perf_counter() - t0
            if not metrics.get("finished", False):
                result.interrupted = True
                say(f"[{i}/{len(todo)}] {pc.name}: stopped before the end of its schedule; "
                    "run the same command again to resume it")
                break
            pc.state = "done"
            result.ran.append(pc.name)
            metric = pc.cell.metric
            say(f"[{i}/{len(todo)}] {pc.name}: {metric} {format_value(flat_metrics(metrics).get(metric))}"
                f"{_paper_text(grid, pc.cell)}  ({pc.seconds:.0f}s)")
            bar.update()
        bar.close()
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    finally:
        if report:
            result.csv_path, result.markdown_path = write_reports(grid, planned, result.out_dir, command)
    return result


def _quiet(line: str) -> None:
    """A cell's log when not verbose: its lines are dropped."""


def _cell_log(say: Log, name: str) -> Log:
    """A cell's log when verbose: each line prefixed with the cell's name."""
    return lambda line: say(f"  [{name}] {line}")


def _result_text(pc: PlannedCell) -> str:
    metrics = flat_metrics(read_metrics(pc.run_dir) or {})
    return f"{pc.cell.metric} {format_value(metrics.get(pc.cell.metric))}"


def _paper_text(grid: Grid, cell: Cell) -> str:
    value = grid.paper.get(grid.row_label(cell.labels), {}).get(grid.column_label(cell.labels))
    return f" (paper {format_paper(value)})" if value else ""
