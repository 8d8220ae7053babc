"""The base of every typed config section, and reading settings from YAML and the command line.

A section is a pydantic model that forbids unknown keys and validates assignments, so a typo in
a YAML file or a `--set key=value` fails before any work starts with a message naming the dotted
key. The sections themselves live beside the code that uses them (`relssl.data.DataConfig`,
`relssl.methods.relational.RelationalConfig`, ...); `relssl.train.config` assembles a run's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from relssl.errors import ConfigError

__all__ = ["Section", "describe_validation_error", "load_yaml", "parse_value", "validate_section"]

SectionT = TypeVar("SectionT", bound="Section")
_NAMED_KEY = re.compile(r"^([A-Za-z_][\w-]*(?:\.[\w-]+)+)(:?) (.*)$", re.S)


class Section(BaseModel):
    """A config section; a typo in a key fails validation instead of being ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line naming the first bad key (`prefix.key`) and what is wrong with it."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in (*([prefix] if prefix else []), *first["loc"])) or "config"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        msg = "unknown key; check the spelling against `relssl train --print-config`"
    named = _NAMED_KEY.match(msg)  # a check that names its key itself: "data.root: ...", "rcl.radii must ..."
    if named and (key == "config" or named.group(1) == key or named.group(1).startswith(f"{key}.")):
        key = named.group(1)
        msg = named.group(3) if named.group(2) else msg  # "key: what" loses the label; "key must ..." reads on
    return f"config key '{key}': {msg}{more}"


def validate_section(model: type[SectionT], values: Any, prefix: str = "") -> SectionT:
    """`model` validated from `values`; a bad value raises ConfigError naming `prefix.key`."""
    try:
        return model.model_validate(values if values is not None else {})
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, prefix)) from None


def parse_value(text: str) -> Any:
    """Parse a command-line value with YAML rules (numbers, booleans, null, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dictionary (safe loader only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of keys")
    return data
