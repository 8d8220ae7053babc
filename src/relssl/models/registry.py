"""The backbone registry: `@register_backbone(name)` on a class or factory function, `create_backbone(name)`.

    @register_backbone("conv4")
    class Conv4(nn.Module): ...           # options: the constructor's keyword arguments

A backbone's options are its factory's keyword parameters, with their annotations and defaults:
they become a strict pydantic model (`BackboneSpec.options`), so `backbone.options` in a config
is checked at start-up and the defaults live in one place, the constructor.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ConfigDict, ValidationError, create_model
from torch import nn

from relssl.config import Section
from relssl.errors import ConfigError
from relssl.models.backbone import check_backbone
from relssl.registry import Registry

__all__ = ["BACKBONES", "BackboneOptions", "BackboneSpec", "backbone_options", "create_backbone", "register_backbone"]

FactoryT = TypeVar("FactoryT", bound=Callable[..., nn.Module])


class BackboneOptions(Section):
    """Base of every backbone's options model: strict types (3.0 is not an int, "yes" not a bool)."""

    model_config = ConfigDict(strict=True)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its factory, its options model and a one-line summary."""

    name: str
    build: Callable[..., nn.Module]
    options: type[BackboneOptions]
    summary: str = ""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def options_model(factory: Callable[..., Any], name: str) -> type[BackboneOptions]:
    """A strict pydantic model of `factory`'s keyword options (every parameter needs a default)."""
    fields: dict[str, Any] = {}
    for param in inspect.signature(factory, eval_str=True).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is param.empty:
            raise TypeError(f"backbone {name!r}: option {param.name!r} needs a default (options come from config)")
        annotation = Any if param.annotation is param.empty else param.annotation
        fields[param.name] = (annotation, param.default)
    model: type[BackboneOptions] = create_model(f"{name}_options", __base__=BackboneOptions, **fields)
    return model


def register_backbone(name: str, *, summary: str = "", replace: bool = False) -> Callable[[FactoryT], FactoryT]:
    """Decorator registering a backbone class or factory under `name`; returns it unchanged."""

    def decorate(factory: FactoryT) -> FactoryT:
        doc = summary or (inspect.getdoc(factory) or "").split("\n")[0]
        BACKBONES.add(BackboneSpec(name, factory, options_model(factory, name), doc), replace=replace)
        return factory

    return decorate


def backbone_options(name: str, options: Mapping[str, Any]) -> BackboneOptions:
    """The validated options of backbone `name`; a ConfigError names an unknown or bad option."""
    spec = BACKBONES.get(name)
    valid = list(spec.options.model_fields)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} for backbone {name!r}; "
                          f"valid options: {', '.join(valid) or 'none'}")
    try:
        return spec.options.model_validate(dict(options))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"backbone {name!r} option {key!r}: {first['msg']}") from None


def create_backbone(name: str, **options: Any) -> nn.Module:
    """Build the registered backbone `name` with `options` (ConfigError on an unknown name or option)."""
    spec = BACKBONES.get(name)
    checked = backbone_options(name, options)
    model = spec.build(**{key: getattr(checked, key) for key in spec.options.model_fields})
    check_backbone(model, f"backbone {name!r}")
    return model
