"""The raw structure of a benchmark grid file, as pydantic models.

The models check the shape of the YAML (types, required and unknown keys) and what each part
means on its own; `relssl.benchmark.grid` reads a validated file into a `Grid` for one scale
and checks how the parts refer to each other (axis names, labels, paper keys).
See docs/protocols/benchmark.md for the file format.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from relssl.config import Section
from relssl.errors import ConfigError

__all__ = [
    "AxisSpec", "AxisValueSpec", "GridError", "GridFile", "KeyedAxisSpec", "PaperValue", "RuleSpec",
    "ScaleSpec", "describe_grid_error", "fail", "parse_paper_value",
]

PaperValue = tuple[float, float | None]  # (mean, std or None)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PAPER = re.compile(r"\s*([-+]?\d+(?:\.\d+)?)\s*(?:(?:±|\+-|\+/-)\s*(\d+(?:\.\d+)?))?\s*")


class GridError(ConfigError):
    """A malformed benchmark grid file; the message names the file and the key."""


def fail(key: str, message: str) -> NoReturn:
    """Stop reading a grid file at `key` (`parse_grid` adds the file's name to the message)."""
    raise ConfigError(f"key '{key}': {message}")


# ----------------------------------------------------------------------------- field types


def _none_as(empty: Callable[[], Any]) -> BeforeValidator:
    """A validator that reads YAML's null (a key with nothing after it) as `empty()`."""
    return BeforeValidator(lambda value: empty() if value is None else value)


def _as_text(value: Any) -> Any:
    """Numbers and booleans as text: YAML reads a label such as `2` as a number."""
    return str(value) if isinstance(value, (int, float, bool)) else value


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, int, float, bool)) else value


def _scalar(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError("must be text or a number")


def _plain_axis_value(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError("an axis value is a scalar or a mapping with label, title, value, set, metric")


def _axis_names(value: Any) -> Any:
    value = [value] if isinstance(value, str) else value
    if isinstance(value, list):
        return value
    raise ValueError("an axis name or a list of them, e.g. method or [method, dataset]")


def _metric_key(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a metrics.json key such as linear_top1 or finetune_top1")
    return value


def _metric_keys(value: Any) -> Any:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not value:
        raise ValueError("a metrics.json key such as linear_top1, or a list of them")
    return value


def _config_key(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("a dotted config key such as relational.k")
    return value


def _grid_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError("a name of letters, digits, '.', '_' or '-' (it names the output folder)")
    return value


def _paper_value(value: Any) -> PaperValue | None:
    """A published number: 46.17, '46.17±0.17' (or '46.17 +- 0.17'), or null / 'n/a' for unknown."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("n/a", "na", "")):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), None
    match = _PAPER.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r} is not a number, 'mean±std', or n/a")
    return float(match.group(1)), float(match.group(2)) if match.group(2) else None


def _at_least_one(message: str) -> AfterValidator:
    """A validator that rejects an empty list or mapping with `message`."""

    def check(value: Any) -> Any:
        if not value:
            raise ValueError(message)
        return value

    return AfterValidator(check)


def _one_entry(value: dict[str, str]) -> dict[str, str]:
    if len(value) != 1:
        raise ValueError("name one axis and its reference label, e.g. {augment: full}")
    return value


Tree = Annotated[dict[Any, Any], _none_as(dict)]  # config overrides; dotted keys allowed
Text = Annotated[str, _none_as(str), AfterValidator(str.strip)]
Label = Annotated[str, BeforeValidator(_as_text)]
Scalar = Annotated[Any, AfterValidator(_scalar)]
MetricKey = Annotated[str, BeforeValidator(_metric_key)]
Labels = Annotated[list[Label], BeforeValidator(_as_list)]  # one label or a list of them
MatcherSpec = Annotated[dict[Label, Labels], _at_least_one("name at least one axis and its label(s)")]
TableAxes = Annotated[list[Label], BeforeValidator(_axis_names), _at_least_one("name at least one axis")]
PaperCell = Annotated[Any, AfterValidator(_paper_value)]
PaperRow = Annotated[dict[Label, PaperCell], _none_as(dict)]


# ----------------------------------------------------------------------------- models


def _kind(value: Any) -> str:
    """Tag of a value that may be written as a mapping or in a shorter form."""
    return "mapping" if isinstance(value, (dict, BaseModel)) else "short"


class AxisValueSpec(Section):
    """An axis value written as a mapping; a plain scalar stands for `{value: x}`."""

    label: Scalar | None = None
    title: Scalar | None = None
    value: Any = None
    set: Tree = Field(default_factory=dict)
    metric: MetricKey | None = None


AxisItem = Annotated[
    Annotated[AxisValueSpec, Tag("mapping")] | Annotated[Any, AfterValidator(_plain_axis_value), Tag("short")],
    Discriminator(_kind),
]
AxisValues = Annotated[list[AxisItem], _at_least_one("give at least one value")]


class KeyedAxisSpec(Section):
    """An axis written as `{key, values}`: `key` is the config key its plain values set."""

    key: Annotated[str, BeforeValidator(_config_key)] | None = None
    values: AxisValues = Field(description="the axis's values, e.g. [2, 4, {label: k8, value: 8}]")


AxisSpec = Annotated[
    Annotated[AxisValues, Tag("short")] | Annotated[KeyedAxisSpec, Tag("mapping")],
    Discriminator(_kind),
]


class ScaleSpec(Section):
    """One scale: config overrides (any other key), axes it replaces and a note for the report."""

    model_config = ConfigDict(extra="allow")

    axes: Annotated[dict[Label, AxisSpec], _none_as(dict)] = Field(default_factory=dict)
    note: Text = ""

    @property
    def config(self) -> dict[Any, Any]:
        """The scale's config overrides (every key but `axes` and `note`)."""
        return dict(self.model_extra or {})


Scales = Annotated[
    dict[Label, Annotated[ScaleSpec, _none_as(dict)]],
    _at_least_one("define at least one scale, e.g. smoke: {train: {max_steps: 300}}"),
]
Axes = Annotated[dict[Label, AxisSpec], _at_least_one("name at least one axis, e.g. method: [relational]")]


class RuleSpec(Section):
    """Extra overrides (and/or the headline metric) for the cells `when` selects."""

    when: MatcherSpec = Field(description="the axes and labels of the cells it applies to, e.g. {method: relational}")
    set: Tree = Field(default_factory=dict)
    metric: MetricKey | None = None

    @model_validator(mode="after")
    def _does_something(self) -> RuleSpec:
        if not {"set", "metric"} & self.model_fields_set:
            raise ValueError("a rule is a mapping {when: {axis: label}, set: {key: value}} (and/or metric: KEY)")
        return self


class GridFile(Section):
    """The whole grid file as written (before a scale is chosen)."""

    name: Annotated[str, BeforeValidator(_grid_name)] = Field(
        description="a name of letters, digits, '.', '_' or '-' (it names the output folder)")
    description: Text = ""
    metric: Annotated[list[MetricKey], BeforeValidator(_metric_keys)] = Field(default_factory=lambda: ["linear_top1"])
    base: Tree = Field(default_factory=dict)
    scales: Scales | None = None
    default_scale: Label | None = None
    axes: Axes = Field(description="a mapping of axis names to their values, e.g. method: [relational]")
    rows: TableAxes = Field(description="the axis (or list of axes) laid out as table rows")
    columns: TableAxes = Field(description="the axis (or list of axes) laid out as table columns")
    rules: Annotated[list[RuleSpec], _none_as(list)] = Field(default_factory=list)
    exclude: list[MatcherSpec] = Field(default_factory=list)
    paper: Annotated[dict[Label, PaperRow], _none_as(dict)] = Field(default_factory=dict)
    paper_note: Text = ""
    baseline: Annotated[dict[Label, Label], AfterValidator(_one_entry)] | None = None

    @property
    def scale_names(self) -> tuple[str, ...]:
        return tuple(self.scales) if self.scales is not None else ("default",)

    def choose_scale(self, wanted: str | None) -> str:
        """Name of the scale to use: `wanted`, else `default_scale`, else the first listed."""
        if self.scales is None:
            if wanted not in (None, "default"):
                fail("scales", f"--scale {wanted} asked for, but the grid defines no scales")
            return "default"
        name = wanted or self.default_scale or self.scale_names[0]
        if name not in self.scales:
            key = "default_scale" if wanted is None else "scales"
            fail(key, f"no scale named {name!r}; this grid has {', '.join(self.scale_names)}")
        return name

    def scale(self, name: str) -> ScaleSpec:
        """The body of scale `name` (empty for a grid without scales)."""
        return self.scales[name] if self.scales is not None else ScaleSpec()


def parse_paper_value(value: Any, where: str = "paper") -> PaperValue | None:
    """A published number: 46.17, '46.17±0.17' (or '46.17 +- 0.17'), or null / 'n/a' for unknown."""
    try:
        return _paper_value(value)
    except ValueError as err:
        raise GridError(f"{where}: {err}") from None


# ----------------------------------------------------------------------------- error messages

_MESSAGES = {
    "dict_type": "must be a mapping (key: value)",
    "model_type": "must be a mapping (key: value)",
    "model_attributes_type": "must be a mapping (key: value)",
    "list_type": "must be a list, e.g. [a, b]",
    "string_type": "must be text",
    "invalid_key": "keys must be text",
}


def describe_grid_error(err: ValidationError) -> str:
    """One line naming the first bad key of a grid file (`axes.method[0].sett`) and what is wrong."""
    errors = err.errors()
    # a misspelt key first: it is the cause of the "required" error for the key it was meant to be
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    key, owner, info = _locate(first["loc"])
    if first["type"] == "extra_forbidden" and owner is not None:
        message = f"unknown key; allowed: {', '.join(owner.model_fields)}"
    elif first["type"] == "missing":
        message = "required" + (f": {info.description}" if info is not None and info.description else "")
    else:
        message = _MESSAGES.get(first["type"], first["msg"].removeprefix("Value error, "))
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"key '{key or 'top level'}': {message}{more}"


def _locate(loc: tuple[int | str, ...]) -> tuple[str, type[BaseModel] | None, FieldInfo | None]:
    """Follow a pydantic error location through GridFile's types.

    Returns the dotted key as written in the file (list positions as `[i]`, union tags dropped),
    the model the last part belongs to, and that part's field (None for an unknown key).
    """
    key, node = "", _bare(GridFile)
    owner: type[BaseModel] | None = None
    info: FieldInfo | None = None
    for part in loc:
        member = _tagged_member(node, part)
        if member is not None:  # the tag pydantic puts in the location of a discriminated union
            node = _bare(member)
            continue
        owner, info = None, None
        if isinstance(node, type) and issubclass(node, BaseModel):
            owner, info = node, node.model_fields.get(str(part))
            node = info.annotation if info is not None else Any
        elif get_origin(node) is list and isinstance(part, int):
            key, node = f"{key}[{part}]", _bare(get_args(node)[0])
            continue
        elif get_origin(node) is dict:
            node = get_args(node)[1]
        else:
            node = Any
        key = f"{key}.{part}" if key else str(part)
        node = _bare(node)
    return key, owner, info


def _union_members(node: Any) -> list[Any]:
    if get_origin(node) in (Union, types.UnionType):
        return [m for m in get_args(node) if m is not type(None)]
    return []


def _bare(node: Any) -> Any:
    """`node` without Annotated metadata and without `| None`."""
    while True:
        if get_origin(node) is Annotated:
            node = get_args(node)[0]
        elif len(_union_members(node)) == 1:
            node = _union_members(node)[0]
        else:
            return node


def _tagged_member(node: Any, part: int | str) -> Any:
    """The member of a discriminated union whose Tag is `part` (None if `node` is no such union)."""
    for member in _union_members(node):
        if any(isinstance(t, Tag) and t.tag == part for t in getattr(member, "__metadata__", ())):
            return member
    return None
