"""Benchmark grid files: read one for a scale, then expand its axes into cells.

A grid names config overrides along axes (method × dataset or protocol × backbone × seed ...);
every combination is a *cell*, one `relssl train` run with a deterministic run name. The file's
structure is a pydantic schema (`relssl.benchmark.schema`, axes in `relssl.benchmark.axes`),
checked up front with the bad key named; this module checks how the parts refer to each other.
The run configs themselves are validated later (see `relssl.benchmark.runner`).
See docs/protocols/benchmark.md for the file format.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from relssl.benchmark.axes import DEFAULT_AXIS_KEYS, UNSAFE, Axis, AxisValue, read_axis
from relssl.benchmark.schema import (
    GridError,
    GridFile,
    PaperValue,
    describe_grid_error,
    fail,
    parse_paper_value,
)
from relssl.dicts import flatten, nest_dotted
from relssl.errors import ConfigError

__all__ = [
    "DEFAULT_AXIS_KEYS", "PREFERRED_DONOR", "RANDOM_METHOD", "Axis", "AxisValue", "Cell", "Grid", "GridError",
    "Matcher", "PaperValue", "Rule", "expand", "load_grid", "parse_grid", "parse_paper_value", "table_labels",
    "table_title",
]

RANDOM_METHOD = "random"  # the random-init lower bound; derived from another cell, never trained
PREFERRED_DONOR = "relational"  # the method whose run supplies the random-init numbers, when present
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Matcher:
    """Selects cells by axis labels: every named axis must take one of the listed labels."""

    when: dict[str, frozenset[str]]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels[axis] in allowed for axis, allowed in self.when.items())


@dataclass(frozen=True)
class Rule:
    """Extra overrides for the cells a matcher selects (e.g. K=16 for relational on tiny-ImageNet)."""

    matcher: Matcher
    overrides: dict[str, Any]
    metric: str | None = None  # as AxisValue.metric


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a label per axis (seed included) and the dotted overrides it applies."""

    labels: dict[str, str]
    seed: int
    cell_id: str  # the labels of every axis but seed, joined: stable across seeds
    overrides: dict[str, Any]
    metric: str = "linear_top1"  # metrics.json key behind the grid's first metric (e.g. finetune_top1)
    random_init: bool = False  # the random-init lower bound, read from `donor`'s run
    donor: str | None = None  # run name of the cell that supplies random-init numbers

    @property
    def run_name(self) -> str:
        """Directory name of the cell's run: `<cell id>-seed<k>`."""
        return f"{self.cell_id}-seed{self.seed}"


@dataclass(frozen=True)
class Grid:
    """A parsed grid file at one scale."""

    name: str
    path: Path
    scale: str
    scales: tuple[str, ...]
    description: str
    scale_note: str
    metrics: tuple[str, ...]
    base: dict[str, Any]
    scale_overrides: dict[str, Any]
    axes: tuple[Axis, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    excludes: tuple[Matcher, ...] = ()
    paper: dict[str, dict[str, PaperValue | None]] = field(default_factory=dict)
    paper_note: str = ""
    baseline: tuple[str, str] | None = None  # (axis, label): the report adds the headline metric's drop from it

    def axis(self, name: str) -> Axis:
        return next(a for a in self.axes if a.name == name)

    @property
    def seed_axis(self) -> Axis:
        return self.axis("seed")

    def row_label(self, labels: Mapping[str, str]) -> str:
        """Composite label of a cell's row ('a/b' when rows spans several axes)."""
        return "/".join(labels[a] for a in self.rows)

    def column_label(self, labels: Mapping[str, str]) -> str:
        return "/".join(labels[a] for a in self.columns)

    def cells(self) -> list[Cell]:
        """Every cell, in the order of the axes' product (first axis slowest), exclusions removed."""
        return expand(self)


# ----------------------------------------------------------------------------- loading


def load_grid(path: str | Path, scale: str | None = None, environ: Mapping[str, str] | None = None) -> Grid:
    """Read a grid file and select a scale; `${VAR}` is taken from `environ` (default os.environ).

    Only the parts in force at the chosen scale are interpolated, so a variable used by the
    smoke scale alone need not be set for the paper scale.
    """
    path = Path(path)
    if not path.is_file():
        raise GridError(f"benchmark grid {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise GridError(f"benchmark grid {path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise GridError(f"benchmark grid {path}: the top level must be a mapping of keys")
    return parse_grid(raw, path, scale, os.environ if environ is None else environ)


def parse_grid(raw: Mapping[str, Any], path: Path, scale: str | None, environ: Mapping[str, str]) -> Grid:
    """Validate a grid's raw YAML mapping and build the Grid for one scale.

    The whole file is validated first; then `${VAR}` is substituted in the parts in force at the
    chosen scale and those are read again.
    """
    try:
        name = GridFile.model_validate(raw).choose_scale(scale)
        return _build(GridFile.model_validate(_substitute_env(raw, name, environ)), name, path)
    except ValidationError as err:
        raise GridError(f"benchmark grid {path}: {describe_grid_error(err)}") from None
    except ConfigError as err:  # "key '...': ..." from the checks below, nest_dotted or the substitution
        raise GridError(f"benchmark grid {path}: {err}") from None


def _substitute_env(raw: Mapping[str, Any], scale: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """`raw` with `${VAR}` / `${VAR:-default}` replaced in the parts in force at `scale`.

    Those are `base`, the scale's config and axes, the axes it does not replace, and the rules'
    `set`; a variable used only elsewhere (another scale) need not be set. `raw` must already have
    passed `GridFile` validation.
    """
    sub = _Substitution(environ)
    out = dict(raw)
    scales = raw.get("scales") or {}
    chosen = next((k for k in scales if str(k) == scale), None)
    body = scales.get(chosen) or {}
    if chosen is not None:
        out["scales"] = {**scales, chosen: {n: v if n == "note" else sub(v, f"scales.{scale}.{n}")
                                            for n, v in body.items()}}
    replaced = {str(n) for n in body.get("axes") or {}}
    out["axes"] = {n: v if str(n) in replaced else sub(v, f"axes.{n}") for n, v in raw["axes"].items()}
    if "base" in raw:
        out["base"] = sub(raw["base"], "base")
    if raw.get("rules"):
        out["rules"] = [{**r, "set": sub(r["set"], f"rules[{i}].set")} if "set" in r else r
                        for i, r in enumerate(raw["rules"])]
    return out


class _Substitution:
    """Replaces `${VAR}` / `${VAR:-default}` in every string of a tree; errors name the key."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def __call__(self, node: Any, where: str) -> Any:
        if isinstance(node, dict):
            return {k: self(v, f"{where}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            return [self(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            return _ENV.sub(lambda m: self._lookup(m, where), node)
        return node

    def _lookup(self, match: re.Match[str], where: str) -> str:
        name, default = match.group(1), match.group(2)
        value = self.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        fail(where, f"environment variable {name} is not set (used as ${{{name}}}); "
                    f"export {name}=... before running (a scale that does not use it needs none)")


def _build(spec: GridFile, scale: str, path: Path) -> Grid:
    """The Grid of a validated file at one scale, after checking the references between its parts."""
    body = spec.scale(scale)
    base = nest_dotted(spec.base, "base")
    scale_tree = nest_dotted(body.config, f"scales.{scale}")
    sources = {name: (axis, f"axes.{name}") for name, axis in spec.axes.items()}
    for name, axis in body.axes.items():
        if name not in spec.axes and name != "seed":
            fail(f"scales.{scale}.axes.{name}", f"not an axis of this grid ({', '.join(spec.axes)})")
        sources[name] = (axis, f"scales.{scale}.axes.{name}")
    axes = [read_axis(name, axis, where) for name, (axis, where) in sources.items()]
    if "seed" not in sources:
        seed = base.get("seed", 0)
        axes.append(Axis("seed", "seed", (AxisValue(str(seed), str(seed), {"seed": seed}, seed),)))
    by_name = {a.name: a for a in axes}

    rows = _table_axes(spec.rows, "rows", by_name)
    columns = _table_axes(spec.columns, "columns", by_name)
    if set(rows) & set(columns):
        fail("columns", f"axis {min(set(rows) & set(columns))!r} is already used by rows")
    rules = tuple(
        Rule(_matcher(rule.when, f"rules[{i}].when", by_name),
             flatten(nest_dotted(rule.set, f"rules[{i}].set")), rule.metric)
        for i, rule in enumerate(spec.rules)
    )
    excludes = tuple(_matcher(m, f"exclude[{i}]", by_name) for i, m in enumerate(spec.exclude))
    grid = Grid(
        name=spec.name, path=path, scale=scale, scales=spec.scale_names, description=spec.description,
        scale_note=body.note, metrics=tuple(spec.metric), base=base, scale_overrides=flatten(scale_tree),
        axes=tuple(axes), rows=rows, columns=columns, rules=rules, excludes=excludes,
        paper_note=spec.paper_note, baseline=_baseline(spec.baseline, by_name, rows + columns),
    )
    return replace(grid, paper=_paper(spec.paper, grid))


def _table_axes(names: list[str], where: str, axes: Mapping[str, Axis]) -> tuple[str, ...]:
    for name in names:
        if name not in axes:
            fail(where, f"{name!r} is not an axis of this grid ({', '.join(axes)})")
        if name == "seed":
            fail(where, "seed cannot be a table axis: tables average over seeds")
    return tuple(names)


def _matcher(spec: Mapping[str, list[str]], where: str, axes: Mapping[str, Axis]) -> Matcher:
    for axis, labels in spec.items():
        if axis not in axes:
            fail(f"{where}.{axis}", f"not an axis of this grid ({', '.join(axes)})")
        for label in labels:
            if label not in axes[axis].labels:
                fail(f"{where}.{axis}", f"{label!r} is not a label of axis {axis!r} ({', '.join(axes[axis].labels)})")
    return Matcher({axis: frozenset(labels) for axis, labels in spec.items()})


def _baseline(spec: Mapping[str, str] | None, axes: Mapping[str, Axis], table_axes: Sequence[str]
              ) -> tuple[str, str] | None:
    """`baseline: {axis: label}`: a row or column axis and the label every other value is compared with."""
    if spec is None:
        return None
    ((axis, label),) = spec.items()
    if axis not in table_axes:
        fail(f"baseline.{axis}", f"not a row or column axis of this grid ({', '.join(table_axes)})")
    if label not in axes[axis].labels:
        fail(f"baseline.{axis}", f"{label!r} is not a label of axis {axis!r} ({', '.join(axes[axis].labels)})")
    return axis, label


def _paper(table: Mapping[str, Mapping[str, PaperValue | None]], grid: Grid) -> dict[str, dict[str, PaperValue | None]]:
    """`paper[row label][column label]`, checked against the table's labels."""
    row_labels = table_labels(grid, grid.rows)
    col_labels = table_labels(grid, grid.columns)
    for row, cols in table.items():
        if row not in row_labels:
            fail(f"paper.{row}", f"not a row label of this grid ({', '.join(row_labels)})")
        for col in cols:
            if col not in col_labels:
                fail(f"paper.{row}.{col}", f"not a column label of this grid ({', '.join(col_labels)})")
    return {row: dict(cols) for row, cols in table.items()}


def table_labels(grid: Grid, axes: Sequence[str]) -> list[str]:
    """Composite labels ('a/b') of a table's rows or columns, in axis order."""
    return ["/".join(combo) for combo in itertools.product(*(grid.axis(a).labels for a in axes))]


def table_title(grid: Grid, axes: Sequence[str], label: str) -> str:
    """Display title for a composite label."""
    return " / ".join(grid.axis(a).title(part) for a, part in zip(axes, label.split("/")))


# ----------------------------------------------------------------------------- expansion


def expand(grid: Grid) -> list[Cell]:
    """Cells of the grid: the axes' product minus exclusions, with overrides merged in precedence order.

    Precedence (later wins): base < scale < axis values (in axis order) < rules (in file order).
    The same order picks a cell's `metric` (the key behind the grid's first metric).
    A `method: random` cell gets no config of its own: it reads the random-init numbers of a donor
    cell (same labels on every other axis, the relational method when present, else the first
    other method), and the donor is told to compute them (`eval.compare_random: true`).
    """
    cells: list[Cell] = []
    for combo in itertools.product(*(a.values for a in grid.axes)):
        labels = {a.name: v.label for a, v in zip(grid.axes, combo)}
        if any(m.matches(labels) for m in grid.excludes):
            continue
        overrides = dict(grid.scale_overrides)
        metric = grid.metrics[0]
        for value in combo:
            overrides.update(value.overrides)
            metric = value.metric or metric
        is_random = _is_random(grid, labels)
        for rule in grid.rules:
            if rule.matcher.matches(labels):
                overrides.update(rule.overrides)
                metric = rule.metric or metric
        seed = grid.seed_axis.values[grid.seed_axis.labels.index(labels["seed"])].value
        cell_id = "_".join(UNSAFE.sub("_", labels[a.name]).strip("_") for a in grid.axes if a.name != "seed")
        cells.append(Cell(labels=labels, seed=int(seed), cell_id=cell_id or grid.name, overrides=overrides,
                          metric=metric, random_init=is_random))
    names = [c.run_name for c in cells]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise GridError(f"benchmark grid {grid.path}: two cells share the run name {dupes[0]!r}; "
                        "give axis values labels that differ in letters or digits")
    return _assign_donors(grid, cells)


def _is_random(grid: Grid, labels: Mapping[str, str]) -> bool:
    if "method" not in (a.name for a in grid.axes):
        return False
    value = next(v for v in grid.axis("method").values if v.label == labels["method"])
    return value.overrides.get("method", value.label) == RANDOM_METHOD


def _assign_donors(grid: Grid, cells: list[Cell]) -> list[Cell]:
    """Link each random-init cell to its donor and ask the donor to evaluate its random init."""
    if not any(c.random_init for c in cells):
        return cells
    by_rest: dict[tuple[tuple[str, str], ...], list[Cell]] = {}
    for c in cells:
        if not c.random_init:
            rest = tuple((k, v) for k, v in c.labels.items() if k != "method")
            by_rest.setdefault(rest, []).append(c)
    donors: dict[str, str] = {}
    for c in cells:
        if not c.random_init:
            continue
        rest = tuple((k, v) for k, v in c.labels.items() if k != "method")
        candidates = by_rest.get(rest, [])
        if not candidates:
            raise GridError(f"benchmark grid {grid.path}: cell {c.run_name} (method random) needs another method's "
                            "cell with the same other labels to read random_init_* metrics from; add one to the grid")
        preferred = [d for d in candidates if d.overrides.get("method") == PREFERRED_DONOR]
        donors[c.run_name] = (preferred or candidates)[0].run_name
    donor_names = set(donors.values())
    out = []
    for c in cells:
        if c.random_init:
            c = replace(c, donor=donors[c.run_name], overrides={})
        elif c.run_name in donor_names:
            c = replace(c, overrides={**c.overrides, "eval.compare_random": True})
        out.append(c)
    return out
