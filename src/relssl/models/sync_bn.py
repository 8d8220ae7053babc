"""BatchNorm layers as SyncBatchNorm, including timm's fused BatchNorm + activation layers."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

__all__ = ["sync_batchnorm"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def sync_batchnorm(model: ModuleT) -> ModuleT:
    """`model` (not itself a BatchNorm) with every BatchNorm swapped for a SyncBatchNorm, in place.

    torch's converter turns timm's `BatchNormAct2d` (a BatchNorm2d subclass that also applies its
    activation) into a plain SyncBatchNorm and silently drops the activation; timm's converter keeps
    it, so it is used when the model holds timm layers. LayerNorm models (ViTs) are left as they are.
    """
    if any(type(m).__module__.startswith("timm.") for m in model.modules()):
        from timm.layers import convert_sync_batchnorm

        converted: nn.Module = convert_sync_batchnorm(model)
    else:
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model  # children swapped, the root kept
    return model
