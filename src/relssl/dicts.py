"""Nested-dictionary helpers for config trees: dotted keys, deep merges, flattening."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relssl.errors import ConfigError

__all__ = ["deep_copy", "deep_merge", "flatten", "nest_dotted", "set_dotted"]


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c = value` inside a nested dictionary, creating sections as needed."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """`a` updated by `b`, merging nested mappings (b wins on leaves; an empty mapping in b replaces)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and v and isinstance(out.get(k), dict) else v
    return out


def deep_copy(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a nested dictionary whose sections can be changed without touching the original."""
    return {k: deep_copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


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


def nest_dotted(tree: Mapping[Any, Any], where: str = "") -> dict[str, Any]:
    """A tree whose `a.b: v` keys are expanded into nested sections (deep-merged with the rest).

    A bad key raises ConfigError naming `where.key`.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        here = f"{where}.{key}" if where else str(key)
        if not isinstance(key, str):
            raise ConfigError(f"key '{here}': config keys are strings")
        value = nest_dotted(value, here) if isinstance(value, dict) and value else value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"key '{here}': '{part}' is a value, not a section")
            node = child
        last = parts[-1]
        if isinstance(value, dict) and value and isinstance(node.get(last), dict):
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = value
    return out
