"""Option parsing shared by the commands: `--set KEY=VALUE`, argument types, description wrapping."""

from __future__ import annotations

import argparse
import math
import textwrap
from typing import Any

from relssl.config import parse_value
from relssl.errors import ConfigError

__all__ = ["RAW", "parse_sets", "positive_float", "positive_int", "wrap"]

RAW = argparse.RawDescriptionHelpFormatter  # keeps the examples epilogs as written


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as dotted overrides, values parsed with YAML rules (numbers, booleans, lists)."""
    sets: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        sets[key.strip()] = parse_value(value)
    return sets


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def wrap(text: str) -> str:
    """Wrap a description ourselves: the raw formatter (kept for the examples epilogs) does not."""
    return textwrap.fill(" ".join(text.split()), width=88)
