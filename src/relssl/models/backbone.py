"""The interface every backbone satisfies, and the checks methods use to rely on it.

A backbone is an `nn.Module` mapping float (B, C, H, W) images to (B, feature_dim) pooled
features, with an int `feature_dim`. Methods that need spatial features (Deep InfoMax) also
require `forward_map`: (B, C, H, W) -> the feature map before global pooling, and
`forward_with_local(x, layer)`: one forward pass returning the pooled features together with a
named intermediate map ("first": the first block's map before any down-sampling, as the
Relational Reasoning reference code feeds Deep InfoMax; "last": the map `forward_map` returns).
"""

from __future__ import annotations

from typing import Literal, Protocol, get_args, runtime_checkable

import torch
from torch import nn

from relssl.errors import ConfigError

__all__ = ["LOCAL_LAYERS", "Backbone", "FeatureMapBackbone", "LocalLayer", "LocalMapBackbone", "LocalMaps",
           "feature_dim", "require_feature_map", "require_local_map"]

LocalLayer = Literal["first", "last"]
LOCAL_LAYERS: tuple[str, ...] = get_args(LocalLayer)


@runtime_checkable
class Backbone(Protocol):
    """Pooled features of size `feature_dim` from a batch of images."""

    feature_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FeatureMapBackbone(Backbone, Protocol):
    """A backbone that also exposes its last feature map before pooling."""

    def forward_map(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class LocalMapBackbone(FeatureMapBackbone, Protocol):
    """A backbone that returns a named intermediate map beside its pooled features in one pass."""

    def local_channels(self, layer: str) -> int: ...

    def forward_with_local(self, x: torch.Tensor, layer: str = "first") -> tuple[torch.Tensor, torch.Tensor]: ...


class LocalMaps:
    """Mixin giving `forward_map`, `forward_with_local` and `local_channels` from three hooks.

    A backbone splits its forward pass into `first_map` (input -> the first block's map before
    any down-sampling), `maps_after_first` (that map -> the last map before pooling) and
    `pool_features` (last map -> (B, feature_dim)); `forward` must equal their composition.
    """

    feature_dim: int
    first_channels: int  # channels of first_map's output

    def first_map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def maps_after_first(self, first: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pool_features(self, fmap: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map before global pooling, (B, feature_dim, h, w)."""
        return self.maps_after_first(self.first_map(x))

    def local_channels(self, layer: str) -> int:
        """Channels of the map `forward_with_local(x, layer)` returns."""
        check_local_layer(layer)
        return self.first_channels if layer == "first" else self.feature_dim

    def forward_with_local(self, x: torch.Tensor, layer: str = "first") -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features y = forward(x), the `layer` map) from one forward pass."""
        check_local_layer(layer)
        first = self.first_map(x)
        last = self.maps_after_first(first)
        return self.pool_features(last), first if layer == "first" else last


def check_local_layer(layer: str) -> None:
    """Raise ValueError unless `layer` names a map in LOCAL_LAYERS."""
    if layer not in LOCAL_LAYERS:
        raise ValueError(f"local layer must be one of {LOCAL_LAYERS}; got {layer!r}")


def check_backbone(module: object, where: str = "backbone") -> None:
    """Raise TypeError unless `module` is an nn.Module satisfying the Backbone protocol."""
    if not isinstance(module, nn.Module) or not isinstance(module, Backbone):
        raise TypeError(f"{where} must be an nn.Module with an int `feature_dim` and a forward(x) -> "
                        f"(B, feature_dim); got {type(module).__name__}")
    dim = module.feature_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TypeError(f"{where}: feature_dim must be a positive int, got {dim!r}")


def feature_dim(module: nn.Module) -> int:
    """The backbone's feature size (a TypeError when `module` is not a Backbone)."""
    check_backbone(module)
    assert isinstance(module, Backbone)
    return module.feature_dim


def require_feature_map(module: nn.Module, method: str) -> FeatureMapBackbone:
    """`module` as a FeatureMapBackbone, or a ConfigError saying that `method` needs one."""
    check_backbone(module)
    if not isinstance(module, FeatureMapBackbone):
        raise ConfigError(f"{method} needs a backbone with feature maps (forward_map); "
                          f"{type(module).__name__} has none")
    return module


def require_local_map(module: nn.Module, method: str, layer: str) -> LocalMapBackbone:
    """`module` as a LocalMapBackbone offering `layer`, or a ConfigError saying that `method` needs one."""
    check_backbone(module)
    if layer not in LOCAL_LAYERS:
        raise ConfigError(f"{method}.local_layer must be one of {LOCAL_LAYERS}; got {layer!r}")
    if not isinstance(module, LocalMapBackbone):
        raise ConfigError(f"{method} needs a backbone with intermediate feature maps (forward_with_local, "
                          f"local_channels); {type(module).__name__} has none")
    return module
