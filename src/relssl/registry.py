"""A name -> part table that parts fill from their own files (methods, backbones, datasets).

Each kind of part has one `Registry` (`relssl.methods.METHODS`, `relssl.models.BACKBONES`,
`relssl.data.DATASETS`). A part registers itself where it is defined, with a decorator of its
package; config assembly, factories and help texts look parts up here by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from relssl.errors import ConfigError

__all__ = ["Named", "Registry"]


class Named(Protocol):
    """What a registry holds: an entry with a unique `name`."""

    @property
    def name(self) -> str: ...


EntryT = TypeVar("EntryT", bound=Named)


class Registry(Generic[EntryT]):
    """Entries of one kind by name, in registration order.

    Registering a taken name is an error unless `replace=True`, so two parts cannot silently
    shadow each other; looking up an unknown name is a `ConfigError` that lists the choices.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, EntryT] = {}

    def add(self, entry: EntryT, *, replace: bool = False) -> EntryT:
        """Register `entry` under its name and return it."""
        name = entry.name
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered; pass replace=True to override it")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> EntryT:
        """Unregister `name` (tests and plugins that clean up after themselves)."""
        return self._entries.pop(name)

    def get(self, name: str) -> EntryT:
        """The entry called `name`; a ConfigError naming the choices when there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown {self.kind} {name!r}; choose from {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[EntryT]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
