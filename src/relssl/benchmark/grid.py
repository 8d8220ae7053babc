"""Benchmark grid files: parse and validate the YAML, then expand its axes into cells.

A grid names config overrides along axes (method × dataset or protocol × backbone × seed ...);
every combination is a *cell*, one `relssl train` run with a deterministic run name. Parsing
checks the whole file's structure up front and names the bad key; the run configs themselves
are validated later by `relssl.config.build_config` (see `relssl.benchmark.runner`).
See docs/protocols/benchmark.md for the file format.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

from relssl.errors import ConfigError

# Axes whose plain values set a known config key; any other axis names its key or uses {label, set}.
DEFAULT_AXIS_KEYS: dict[str, str] = {
    "method": "method",
    "backbone": "backbone.name",
    "dataset": "data.dataset",
    "seed": "seed",
}
RANDOM_METHOD = "random"  # the random-init lower bound; derived from another cell, never trained
PREFERRED_DONOR = "relational"  # the method whose run supplies the random-init numbers, when present
TOP_LEVEL_KEYS = (
    "name", "description", "metric", "base", "scales", "default_scale", "axes", "rows", "columns",
    "rules", "exclude", "paper", "paper_note", "baseline",
)
SCALE_KEYS = ("axes", "note")  # every other key of a scale is config
AXIS_VALUE_KEYS = ("label", "title", "value", "set", "metric")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]+")

PaperValue = tuple[float, float | None]  # (mean, std or None)


class GridError(ConfigError):
    """A malformed benchmark grid file; the message names the file and the key."""


@dataclass(frozen=True)
class AxisValue:
    """One value of an axis: its label (ids, table lookup, paper keys), display title, and overrides."""

    label: str
    title: str
    overrides: dict[str, Any]
    value: Any = None  # what the axis's own key is set to (None when only `set` is given)
    metric: str | None = None  # metrics.json key filling the grid's first metric for these cells


@dataclass(frozen=True)
class Axis:
    """A named list of values; `key` is the config key a plain value sets (None: values use `set`)."""

    name: str
    key: str | None
    values: tuple[AxisValue, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(v.label for v in self.values)

    def title(self, label: str) -> str:
        """Display title of the value with this label."""
        return next(v.title for v in self.values if v.label == label)


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
    """Validate a grid's raw YAML mapping and build the Grid for one scale."""
    err = _Errors(path)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            err.fail(str(key), f"unknown key; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        err.fail("name", "required: letters, digits, '.', '_' or '-' (it names the output folder)")
    metrics = raw.get("metric", "linear_top1")
    metrics = (metrics,) if isinstance(metrics, str) else metrics
    if not isinstance(metrics, (list, tuple)) or not metrics or not all(isinstance(m, str) and m for m in metrics):
        err.fail("metric", "a metrics.json key such as linear_top1, or a list of them")

    scale_name, scale_tree, scale_axes, scale_note, scale_names = _select_scale(raw.get("scales"), scale,
                                                                               raw.get("default_scale"), err)
    interp = _Interpolator(environ, err)
    base = nest_dotted(interp(_mapping(raw.get("base", {}), "base", err), "base"), "base", err)
    scale_tree = nest_dotted(interp(scale_tree, f"scales.{scale_name}"), f"scales.{scale_name}", err)

    raw_axes = _mapping(raw.get("axes"), "axes", err, required=True)
    if not raw_axes:
        err.fail("axes", "name at least one axis, e.g. method: [relational]")
    raw_axes = dict(raw_axes)
    for axis_name, values in scale_axes.items():
        if axis_name not in raw_axes and axis_name != "seed":
            err.fail(f"scales.{scale_name}.axes.{axis_name}", f"not an axis of this grid ({', '.join(raw_axes)})")
        raw_axes[axis_name] = values
    axes = [_parse_axis(str(n), interp(v, f"axes.{n}"), err) for n, v in raw_axes.items()]
    if "seed" not in raw_axes:
        seed = base.get("seed", 0)
        axes.append(Axis("seed", "seed", (AxisValue(str(seed), str(seed), {"seed": seed}, seed),)))
    by_name = {a.name: a for a in axes}

    rows = _axis_list(raw.get("rows"), "rows", by_name, err)
    columns = _axis_list(raw.get("columns"), "columns", by_name, err)
    if set(rows) & set(columns):
        err.fail("columns", f"axis {sorted(set(rows) & set(columns))[0]!r} is already used by rows")
    rules = tuple(
        Rule(_parse_matcher(r.get("when"), f"rules[{i}].when", by_name, err),
             flatten(nest_dotted(interp(_mapping(r.get("set", {}), f"rules[{i}].set", err),
                                        f"rules[{i}].set"), f"rules[{i}].set", err)),
             _metric_name(r.get("metric"), f"rules[{i}].metric", err))
        for i, r in enumerate(_rule_list(raw.get("rules"), err))
    )
    excludes = tuple(
        _parse_matcher(m, f"exclude[{i}]", by_name, err) for i, m in enumerate(_list(raw.get("exclude", []), "exclude", err))
    )
    grid = Grid(
        name=name, path=path, scale=scale_name, scales=scale_names,
        description=_text(raw.get("description", ""), "description", err),
        scale_note=_text(scale_note, f"scales.{scale_name}.note", err),
        metrics=tuple(metrics), base=base, scale_overrides=flatten(scale_tree), axes=tuple(axes),
        rows=rows, columns=columns, rules=rules, excludes=excludes,
        paper_note=_text(raw.get("paper_note", ""), "paper_note", err),
        baseline=_parse_baseline(raw.get("baseline"), by_name, rows + columns, err),
    )
    return replace(grid, paper=_parse_paper(raw.get("paper", {}), grid, err))


class _Errors:
    """Raises GridError naming the file and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> NoReturn:
        raise GridError(f"benchmark grid {self.path}: key '{key}': {message}")


class _Interpolator:
    """Replaces `${VAR}` / `${VAR:-default}` in every string of a tree."""

    def __init__(self, environ: Mapping[str, str], err: _Errors) -> None:
        self.environ, self.err = environ, err

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
        self.err.fail(where, f"environment variable {name} is not set (used as ${{{name}}}); "
                             f"export {name}=... before running (a scale that does not use it needs none)")


def _select_scale(raw_scales: Any, wanted: str | None, default: Any, err: _Errors
                  ) -> tuple[str, dict[str, Any], dict[str, Any], str, tuple[str, ...]]:
    """(name, config tree, axis replacements, note, all scale names) of the chosen scale."""
    if raw_scales is None:
        if wanted not in (None, "default"):
            err.fail("scales", f"--scale {wanted} asked for, but the grid defines no scales")
        return "default", {}, {}, "", ("default",)
    scales = _mapping(raw_scales, "scales", err)
    if not scales:
        err.fail("scales", "define at least one scale, e.g. smoke: {train: {max_steps: 300}}")
    names = tuple(str(s) for s in scales)
    name = wanted or default or names[0]
    if name not in scales:
        key = "default_scale" if wanted is None else "scales"
        err.fail(key, f"no scale named {name!r}; this grid has {', '.join(names)}")
    body = dict(_mapping(scales[name] or {}, f"scales.{name}", err))
    axes = _mapping(body.pop("axes", {}), f"scales.{name}.axes", err)
    note = body.pop("note", "")
    return name, body, dict(axes), note, names


def _parse_axis(name: str, spec: Any, err: _Errors) -> Axis:
    where = f"axes.{name}"
    key = DEFAULT_AXIS_KEYS.get(name)
    values = spec
    if isinstance(spec, dict):
        unknown = set(spec) - {"key", "values"}
        if unknown:
            err.fail(f"{where}.{sorted(unknown)[0]}", "unknown key; an axis mapping has 'key' and 'values'")
        key = spec.get("key", key)
        if key is not None and (not isinstance(key, str) or not key):
            err.fail(f"{where}.key", "a dotted config key such as relational.k")
        values = spec.get("values")
    values = _list(values, where if not isinstance(spec, dict) else f"{where}.values", err)
    if not values:
        err.fail(where, "give at least one value")
    parsed = tuple(_parse_axis_value(v, key, f"{where}[{i}]", name, err) for i, v in enumerate(values))
    labels = [v.label for v in parsed]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        err.fail(where, f"label {dupes[0]!r} appears twice; give the values distinct labels")
    if name == "seed":
        for i, v in enumerate(parsed):
            if not isinstance(v.value, int) or isinstance(v.value, bool) or v.value < 0:
                err.fail(f"{where}[{i}]", "seeds are non-negative integers")
    return Axis(name, key, parsed)


def _parse_axis_value(raw: Any, key: str | None, where: str, axis: str, err: _Errors) -> AxisValue:
    if isinstance(raw, dict):
        unknown = set(raw) - set(AXIS_VALUE_KEYS)
        if unknown:
            err.fail(f"{where}.{sorted(unknown)[0]}", f"unknown key; an axis value has {', '.join(AXIS_VALUE_KEYS)}")
        overrides = flatten(nest_dotted(_mapping(raw.get("set", {}), f"{where}.set", err), f"{where}.set", err))
        value = raw.get("value")
        if value is None and key is not None and key not in overrides and raw.get("label") is not None:
            value = raw["label"]  # on a keyed axis, {label: x} alone means value x
        if value is not None:
            if key is None:
                err.fail(f"{where}.value", f"axis {axis!r} has no config key; give one with `{axis}: {{key: ..., values: [...]}}` or use `set`")
            overrides = {key: value, **overrides}
        label = raw.get("label", None if value is None else value)
        if label is None:
            err.fail(f"{where}.label", "required when the value has no `value`")
        if value is None and not overrides:
            err.fail(where, "give `value` or `set` (the config overrides this value stands for)")
        label = str(label)
        title = raw.get("title", label)
        metric = _metric_name(raw.get("metric"), f"{where}.metric", err)
    elif isinstance(raw, (str, int, float, bool)):
        if key is None:
            err.fail(where, f"axis {axis!r} has no default config key; write `{axis}: {{key: a.dotted.key, values: [...]}}` "
                            "or give each value as {label: ..., set: {key: value}}")
        label, title, value, overrides, metric = str(raw), str(raw), raw, {key: raw}, None
    else:
        err.fail(where, "an axis value is a scalar or a mapping with label/title/value/set/metric")
    if not label or not _UNSAFE.sub("", label):
        err.fail(where, "labels need at least one letter or digit")
    return AxisValue(label=label, title=str(title), overrides=overrides, value=value, metric=metric)


def _metric_name(value: Any, where: str, err: _Errors) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        err.fail(where, "a metrics.json key such as finetune_top1")
    return value


def _axis_list(raw: Any, where: str, axes: Mapping[str, Axis], err: _Errors) -> tuple[str, ...]:
    if raw is None:
        err.fail(where, f"required: the axis (or list of axes) laid out as table {where}; axes: {', '.join(axes)}")
    names = (raw,) if isinstance(raw, str) else tuple(_list(raw, where, err))
    if not names:
        err.fail(where, "name at least one axis")
    for n in names:
        if n not in axes:
            err.fail(where, f"{n!r} is not an axis of this grid ({', '.join(axes)})")
        if n == "seed":
            err.fail(where, "seed cannot be a table axis: tables average over seeds")
    return names


def _parse_matcher(raw: Any, where: str, axes: Mapping[str, Axis], err: _Errors) -> Matcher:
    spec = _mapping(raw, where, err, required=True)
    if not spec:
        err.fail(where, "name at least one axis and its label(s)")
    when: dict[str, frozenset[str]] = {}
    for axis, labels in spec.items():
        if axis not in axes:
            err.fail(f"{where}.{axis}", f"not an axis of this grid ({', '.join(axes)})")
        labels = [str(x) for x in (labels if isinstance(labels, list) else [labels])]
        for label in labels:
            if label not in axes[axis].labels:
                err.fail(f"{where}.{axis}", f"{label!r} is not a label of axis {axis!r} ({', '.join(axes[axis].labels)})")
        when[str(axis)] = frozenset(labels)
    return Matcher(when)


def _parse_baseline(raw: Any, axes: Mapping[str, Axis], table_axes: Sequence[str], err: _Errors
                    ) -> tuple[str, str] | None:
    """`baseline: {axis: label}`: one row or column axis and the label every other value is compared with."""
    if raw is None:
        return None
    spec = _mapping(raw, "baseline", err)
    if len(spec) != 1:
        err.fail("baseline", "name one axis and its reference label, e.g. {augment: full}")
    (axis, label), = spec.items()
    if axis not in table_axes:
        err.fail(f"baseline.{axis}", f"not a row or column axis of this grid ({', '.join(table_axes)})")
    if str(label) not in axes[axis].labels:
        err.fail(f"baseline.{axis}", f"{label!r} is not a label of axis {axis!r} ({', '.join(axes[axis].labels)})")
    return str(axis), str(label)


def _rule_list(raw: Any, err: _Errors) -> list[dict[str, Any]]:
    rules = _list(raw if raw is not None else [], "rules", err)
    for i, r in enumerate(rules):
        if not isinstance(r, dict) or set(r) - {"when", "set", "metric"} or not ({"set", "metric"} & set(r)):
            err.fail(f"rules[{i}]", "a rule is a mapping {when: {axis: label}, set: {key: value}} "
                                    "(and/or metric: KEY)")
    return rules


def _parse_paper(raw: Any, grid: Grid, err: _Errors) -> dict[str, dict[str, PaperValue | None]]:
    """`paper[row label][column label]` = number, 'mean±std', or null/'n/a' (not reported)."""
    table = _mapping(raw if raw is not None else {}, "paper", err)
    row_labels = table_labels(grid, grid.rows)
    col_labels = table_labels(grid, grid.columns)
    out: dict[str, dict[str, PaperValue | None]] = {}
    for row, cols in table.items():
        row = str(row)
        if row not in row_labels:
            err.fail(f"paper.{row}", f"not a row label of this grid ({', '.join(row_labels)})")
        cols = _mapping(cols, f"paper.{row}", err)
        out[row] = {}
        for col, value in cols.items():
            col = str(col)
            if col not in col_labels:
                err.fail(f"paper.{row}.{col}", f"not a column label of this grid ({', '.join(col_labels)})")
            out[row][col] = parse_paper_value(value, f"paper.{row}.{col}", err)
    return out


def parse_paper_value(value: Any, where: str = "paper", err: _Errors | None = None) -> PaperValue | None:
    """A published number: 46.17, '46.17±0.17' (or '46.17 +- 0.17'), or null / 'n/a' for unknown."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("n/a", "na", "")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d+)?)\s*(?:(?:±|\+-|\+/-)\s*(\d+(?:\.\d+)?))?\s*", value)
        if m:
            return float(m.group(1)), float(m.group(2)) if m.group(2) else None
    message = f"{value!r} is not a number, 'mean±std', or n/a"
    if err is None:
        raise GridError(f"{where}: {message}")
    err.fail(where, message)


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
        cell_id = "_".join(_UNSAFE.sub("_", labels[a.name]).strip("_") for a in grid.axes if a.name != "seed")
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


# ----------------------------------------------------------------------------- tree helpers


def nest_dotted(tree: Mapping[str, Any], where: str, err: _Errors | None = None) -> dict[str, Any]:
    """A config tree with `a.b: v` keys expanded into nested sections (deep-merged with the rest)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            (err.fail if err else _raise)(f"{where}.{key}", "config keys are strings")
        value = nest_dotted(value, f"{where}.{key}", err) if isinstance(value, dict) and value else value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                (err.fail if err else _raise)(f"{where}.{key}", f"'{part}' is a value, not a section")
            node = child
        last = parts[-1]
        if isinstance(value, dict) and value and isinstance(node.get(last), dict):
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = value
    return out


def deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """`a` updated by `b`, merging nested mappings (b wins on leaves)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tree -> {dotted key: leaf}; an empty mapping is kept as a leaf (it clears a section)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _raise(key: str, message: str) -> NoReturn:
    raise GridError(f"key '{key}': {message}")


def _mapping(value: Any, where: str, err: _Errors, required: bool = False) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        err.fail(where, "must be a mapping (key: value)" + (" and is required" if value is None else ""))
    return value


def _list(value: Any, where: str, err: _Errors) -> list[Any]:
    if not isinstance(value, list):
        err.fail(where, "must be a list, e.g. [a, b]")
    return value


def _text(value: Any, where: str, err: _Errors) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        err.fail(where, "must be text")
    return value.strip()
