"""The axes of a benchmark grid: each value's label, title and config overrides, read from the file.

An axis is written as a list of values or as `{key, values}`. A plain value sets the axis's
config key (`DEFAULT_AXIS_KEYS` for method, backbone, dataset and seed); a mapping value may
also give a label, a title, other overrides (`set`) and the metric behind the headline table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from relssl.benchmark.schema import AxisSpec, AxisValueSpec, KeyedAxisSpec, fail
from relssl.dicts import flatten, nest_dotted

__all__ = ["DEFAULT_AXIS_KEYS", "UNSAFE", "Axis", "AxisValue", "read_axis"]

# Axes whose plain values set a known config key; any other axis names its key or uses {label, set}.
DEFAULT_AXIS_KEYS: dict[str, str] = {
    "method": "method",
    "backbone": "backbone.name",
    "dataset": "data.dataset",
    "seed": "seed",
}
UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]+")  # what a label may not bring into a run name


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


def read_axis(name: str, spec: AxisSpec, where: str) -> Axis:
    """The axis `name` from its validated list of values or `{key, values}` mapping found at `where`."""
    key = DEFAULT_AXIS_KEYS.get(name)
    items = spec
    if isinstance(spec, KeyedAxisSpec):
        key = spec.key if "key" in spec.model_fields_set else key
        items, where = spec.values, f"{where}.values"
    values = tuple(_axis_value(item, key, name, f"{where}[{i}]") for i, item in enumerate(items))
    for i, v in enumerate(values):
        if not UNSAFE.sub("", v.label):
            fail(f"{where}[{i}]", "labels need at least one letter or digit")
        if name == "seed" and (not isinstance(v.value, int) or isinstance(v.value, bool) or v.value < 0):
            fail(f"{where}[{i}]", "seeds are non-negative integers")
    labels = [v.label for v in values]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        fail(where, f"label {dupes[0]!r} appears twice; give the values distinct labels")
    return Axis(name, key, values)


def _axis_value(item: AxisValueSpec | Any, key: str | None, axis: str, where: str) -> AxisValue:
    """One axis value; a plain scalar sets the axis's key, a mapping may also `set` other keys."""
    if not isinstance(item, AxisValueSpec):
        if key is None:
            fail(where, f"axis {axis!r} has no default config key; write `{axis}: {{key: a.dotted.key, values: "
                        "[...]}` or give each value as {label: ..., set: {key: value}}")
        return AxisValue(label=str(item), title=str(item), overrides={key: item}, value=item)
    overrides = flatten(nest_dotted(item.set, f"{where}.set"))
    value = item.value
    if value is None and key is not None and key not in overrides and item.label is not None:
        value = item.label  # on a keyed axis, {label: x} alone means value x
    if value is not None:
        if key is None:
            fail(f"{where}.value", f"axis {axis!r} has no config key; give one with "
                                   f"`{axis}: {{key: ..., values: [...]}}` or use `set`")
        overrides = {key: value, **overrides}
    label = item.label if item.label is not None else value
    if label is None:
        fail(f"{where}.label", "required when the value has no `value`")
    if value is None and not overrides:
        fail(where, "give `value` or `set` (the config overrides this value stands for)")
    title = item.title if item.title is not None else label
    return AxisValue(label=str(label), title=str(title), overrides=overrides, value=value, metric=item.metric)
