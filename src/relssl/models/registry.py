"""The backbone registry: `@register_backbone(name)` on a class or factory function, `create_backbone(name)`.

    @register_backbone("conv4")
    class Conv4(nn.Module): ...           # options: the constructor's keyword arguments

A backbone's options are its factory's keyword parameters, with their annotations and defaults:
they become a strict pydantic model (`BackboneSpec.options`), so `backbone.options` in a config
is checked at start-up and the defaults live in one place, the constructor.

A family of backbones named `prefix:<name>` (`timm:vit_tiny_patch16_224`) registers one resolver
with `@register_backbone_family(prefix)`; `backbone_spec(name)` asks it for the spec of a name.
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

__all__ = ["BACKBONES", "BACKBONE_FAMILIES", "BackboneFamily", "BackboneOptions", "BackboneSpec", "InputSize",
           "backbone_choices", "backbone_options", "backbone_spec", "create_backbone", "register_backbone",
           "register_backbone_family"]

FactoryT = TypeVar("FactoryT", bound=Callable[..., nn.Module])


class BackboneOptions(Section):
    """Base of every backbone's options model: strict types (3.0 is not an int, "yes" not a bool)."""

    model_config = ConfigDict(strict=True)


@dataclass(frozen=True)
class InputSize:
    """The square image side a backbone is made for, and whether it takes no other (a ViT's patch grid)."""

    side: int
    fixed: bool = False


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its factory, its options model and a one-line summary.

    Optional hooks, given the options as a dict: `check` validates them beyond their types (a
    ConfigError naming the option), `input_size` gives the image size the backbone expects.
    `pooled_only` backbones give pooled features alone (no `forward_map` / `forward_with_local`).
    """

    name: str
    build: Callable[..., nn.Module]
    options: type[BackboneOptions]
    summary: str = ""
    check: Callable[[dict[str, Any]], None] | None = None
    input_size: Callable[[dict[str, Any]], InputSize] | None = None
    pooled_only: bool = False


@dataclass(frozen=True)
class BackboneFamily:
    """Backbones named `prefix:<name>`: `resolve(name)` gives the spec of one (a ConfigError for an unknown name)."""

    name: str  # the prefix, e.g. "timm"
    resolve: Callable[[str], BackboneSpec]
    summary: str = ""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
BACKBONE_FAMILIES: Registry[BackboneFamily] = Registry("backbone family")


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


def register_backbone_family(prefix: str, *, summary: str = "",
                             replace: bool = False) -> Callable[[Callable[[str], BackboneSpec]], Callable[[str], BackboneSpec]]:
    """Decorator registering `resolve(name) -> BackboneSpec` for the backbones named `prefix:<name>`."""

    def decorate(resolve: Callable[[str], BackboneSpec]) -> Callable[[str], BackboneSpec]:
        doc = summary or (inspect.getdoc(resolve) or "").split("\n")[0]
        BACKBONE_FAMILIES.add(BackboneFamily(prefix, resolve, doc), replace=replace)
        return resolve

    return decorate


def backbone_choices() -> tuple[str, ...]:
    """The registered names, then one `prefix:<name>` pattern per family (help texts, error messages)."""
    return (*BACKBONES.names(), *(f"{prefix}:<name>" for prefix in BACKBONE_FAMILIES.names()))


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of backbone `name`, registered or of a family; a ConfigError lists the choices for an unknown one."""
    if isinstance(name, str) and name in BACKBONES:
        return BACKBONES.get(name)
    prefix, colon, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
    if colon and prefix in BACKBONE_FAMILIES:
        return BACKBONE_FAMILIES.get(prefix).resolve(rest)
    raise ConfigError(f"unknown backbone {name!r}; choose from {', '.join(backbone_choices())}")


def backbone_options(name: str, options: Mapping[str, Any]) -> BackboneOptions:
    """The validated options of backbone `name`; a ConfigError names an unknown or bad option."""
    spec = backbone_spec(name)
    valid = list(spec.options.model_fields)
    unknown = sorted(set(options) - set(valid))
    if unknown and spec.options.model_config.get("extra") != "allow":
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} for backbone {name!r}; "
                          f"valid options: {', '.join(valid) or 'none'}")
    try:
        checked = spec.options.model_validate(dict(options))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"backbone {name!r} option {key!r}: {first['msg']}") from None
    if spec.check is not None:
        spec.check(option_values(checked))
    return checked


def option_values(checked: BackboneOptions) -> dict[str, Any]:
    """Validated options as factory keywords: the declared fields, then any passed-through extras."""
    return {**{key: getattr(checked, key) for key in type(checked).model_fields}, **(checked.model_extra or {})}


def create_backbone(name: str, **options: Any) -> nn.Module:
    """Build the backbone `name` with `options` (ConfigError on an unknown name or option)."""
    spec = backbone_spec(name)
    checked = backbone_options(name, options)
    model = spec.build(**option_values(checked))
    check_backbone(model, f"backbone {name!r}")
    return model
