"""Conv-4: the small four-block CNN of the Relational Reasoning reference code.

Follows ``backbones/conv4.py`` of github.com/mpatacchiola/self-supervised-relational-reasoning
(Patacchiola & Storkey, NeurIPS 2020): three conv3x3-BN-ReLU-AvgPool(2) blocks and a fourth
conv3x3-BN-ReLU block followed by global average pooling; channels 3->8->16->32->64,
24,648 parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import PositiveInt
from torch import nn

from relssl.models.backbone import LocalMaps
from relssl.models.registry import register_backbone

Pooling = Literal["avg", "max"]
POOLINGS: tuple[str, ...] = ("avg", "max")


def init_conv_bn(module: nn.Module) -> None:
    """Reference init: conv weights ~ N(0, 2 / (k*k*out)) (= Kaiming normal, fan_out, ReLU), BN 1/0.

    This is what both the reference code and torchvision's ResNets do.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _block(in_ch: int, out_ch: int, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("conv", nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)),
                ("bn", nn.BatchNorm2d(out_ch)),
                ("relu", nn.ReLU(inplace=True)),
                ("pool", pool),
            ]
        )
    )


def _conv_bn_relu(block: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A block without its final pooling: conv, BN, ReLU (entries 0-2)."""
    return block[2](block[1](block[0](x)))


@register_backbone("conv4")
class Conv4(LocalMaps, nn.Module):
    """Conv-4 backbone mapping (B, C, H, W) images to (B, 64) features.

    ``pooling`` picks the 2x2 down-sampling between blocks: ``"avg"`` (AvgPool2d(2), as in the
    reference code, default) or ``"max"`` (MaxPool2d(2), as in few-shot Conv-4 variants).
    The last block always ends in global average pooling, so any input with H, W >= 8 works
    (16x16 -> 8 -> 4 -> 2 -> 1; 32x32 -> 16 -> 8 -> 4 -> 1). State-dict keys
    (``layerN.conv``/``layerN.bn``) match the reference checkpoints. The first map
    (`forward_with_local(x, "first")`) is layer1's conv-BN-ReLU output before its pooling
    (8 channels at the input's resolution), the map the reference code's Deep InfoMax uses.
    """

    feature_dim: int

    def __init__(self, in_channels: PositiveInt = 3, pooling: Pooling = "avg") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"conv4 option 'pooling' must be one of {POOLINGS}, got {pooling!r}")
        pool_cls = nn.AvgPool2d if pooling == "avg" else nn.MaxPool2d
        widths = (in_channels, 8, 16, 32, 64)
        self.layer1 = _block(widths[0], widths[1], pool_cls(kernel_size=2, stride=2))
        self.layer2 = _block(widths[1], widths[2], pool_cls(kernel_size=2, stride=2))
        self.layer3 = _block(widths[2], widths[3], pool_cls(kernel_size=2, stride=2))
        self.layer4 = _block(widths[3], widths[4], nn.AdaptiveAvgPool2d(1))
        self.feature_dim = widths[-1]
        self.first_channels = widths[1]
        self.pooling = pooling
        init_conv_bn(self)

    def first_map(self, x: torch.Tensor) -> torch.Tensor:
        """layer1's conv-BN-ReLU output before its pooling, (B, 8, H, W)."""
        return _conv_bn_relu(self.layer1, x)

    def maps_after_first(self, first: torch.Tensor) -> torch.Tensor:
        """layer1's pooling, layers 2-3 and layer4 up to its global pooling: the last map (B, 64, h, w)."""
        x = self.layer3(self.layer2(self.layer1[-1](first)))
        return _conv_bn_relu(self.layer4, x)

    def pool_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling of the last map, (B, 64)."""
        return torch.flatten(self.layer4[-1](fmap), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.forward_map(x))
