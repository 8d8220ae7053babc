"""The method registry: `@register_method(name, config=Section)` on a `Method` subclass, `create_method(...)`.

    class ToyConfig(Section):
        scale: float = 1.0

    @register_method("toy", config=ToyConfig)
    class Toy(Method):
        def __init__(self, backbone, config=None): ...

The config section is the method's typed settings (`toy.scale` in a run config, `--set
toy.scale=2`); the method receives it whole. A method that needs to know its training set
overrides `Method.from_config`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from relssl.config import Section, validate_section
from relssl.errors import ConfigError
from relssl.methods.base import Method, TrainingSet
from relssl.registry import Registry

__all__ = ["METHODS", "MethodSpec", "create_method", "register_method"]

MethodT = TypeVar("MethodT", bound=type[Method])


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class, its config section (None: no settings) and a one-line summary."""

    name: str
    cls: type[Method]
    config: type[Section] | None
    summary: str = ""

    @property
    def needs_labels(self) -> bool:
        """Whether every training image must be labelled (the supervised upper bound)."""
        return self.cls.needs_labels

    def default_config(self) -> Section | None:
        """The method's settings with every default (None when it has none)."""
        return None if self.config is None else self.config()


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, *, config: type[Section] | None = None, summary: str = "",
                    replace: bool = False) -> Callable[[MethodT], MethodT]:
    """Decorator registering a Method subclass under `name` with its config section; returns the class."""

    def decorate(cls: MethodT) -> MethodT:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) decorates a subclass of relssl.methods.Method, got {cls!r}")
        if config is not None and not (isinstance(config, type) and issubclass(config, Section)):
            raise TypeError(f"method {name!r}: config must be a relssl.config.Section subclass, got {config!r}")
        cls.name = name
        doc = summary or (inspect.getdoc(cls) or "").split("\n")[0]
        METHODS.add(MethodSpec(name, cls, config, doc), replace=replace)
        return cls

    return decorate


def create_method(name: str, backbone: nn.Module, config: Section | dict | None = None, *,
                  num_images: int, num_classes: int = 0, seed: int = 0) -> Method:
    """The registered method `name` around `backbone`, for a training split of `num_images` images.

    `config` is its section (a dict is validated into it; None: the defaults).
    """
    spec = METHODS.get(name)
    if spec.config is None:
        if config:
            raise ConfigError(f"method {name!r} has no settings; got {config!r}")
        section = None
    elif isinstance(config, spec.config):
        section = config
    elif config is None or isinstance(config, dict):
        section = validate_section(spec.config, config, prefix=name)
    else:
        raise TypeError(f"method {name!r} takes a {spec.config.__name__}, got {type(config).__name__}")
    return spec.cls.from_config(backbone, section, TrainingSet(num_images, num_classes, seed))
