"""The interface every backbone satisfies, and the checks methods use to rely on it.

A backbone is an `nn.Module` mapping float (B, C, H, W) images to (B, feature_dim) pooled
features, with an int `feature_dim`. Methods that need spatial features (Deep InfoMax) also
require `forward_map`: (B, C, H, W) -> the feature map before global pooling.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from relssl.errors import ConfigError

__all__ = ["Backbone", "FeatureMapBackbone", "feature_dim", "require_feature_map"]


@runtime_checkable
class Backbone(Protocol):
    """Pooled features of size `feature_dim` from a batch of images."""

    feature_dim: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class FeatureMapBackbone(Backbone, Protocol):
    """A backbone that also exposes its last feature map before pooling."""

    def forward_map(self, x: torch.Tensor) -> torch.Tensor: ...


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
