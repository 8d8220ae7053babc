"""The `backbone` config section: a registered backbone's name and its options."""

from __future__ import annotations

from typing import Any

from pydantic import field_validator, model_validator
from torch import nn

from relssl.config import Section
from relssl.errors import ConfigError
from relssl.models.registry import BackboneSpec, InputSize, backbone_options, backbone_spec, create_backbone

__all__ = ["BackboneConfig"]


class BackboneConfig(Section):
    """Backbone name and options (the keyword options of its registered factory, see relssl.models)."""

    name: str = "conv4"  # a registered name, or timm:<name> for any timm model (relssl.models.timm_backbone)
    cifar_stem: bool | None = None  # only for backbones with that option (resnet18/34/50); None: its default
    options: dict[str, Any] = {}  # any other option of the backbone, e.g. {pooling: max} for conv4
    sync_bn: bool = False  # several GPU processes: BatchNorm statistics over the global batch (SyncBatchNorm)

    @field_validator("name")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        try:
            backbone_spec(name)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return name

    def spec(self) -> BackboneSpec:
        """The registry entry of this backbone."""
        return backbone_spec(self.name)

    def input_size(self) -> InputSize | None:
        """The image size the backbone declares with these options (timm's), None when any size does."""
        spec = self.spec()
        return None if spec.input_size is None else spec.input_size(self.create_kwargs())

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword options for create_backbone, leaving out unset ones."""
        opts = dict(self.options)
        if self.cifar_stem is not None:
            opts["cifar_stem"] = self.cifar_stem
        return opts

    @model_validator(mode="after")
    def _options_fit(self) -> BackboneConfig:
        try:
            backbone_options(self.name, self.create_kwargs())
        except ValueError as err:
            raise ValueError(f"backbone options: {err}") from None
        return self

    def build(self) -> nn.Module:
        """A freshly initialised backbone (draws from torch's global RNG: seed it first)."""
        return create_backbone(self.name, **self.create_kwargs())
