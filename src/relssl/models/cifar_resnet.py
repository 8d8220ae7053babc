"""CIFAR ResNets (ResNet-8/32/56) as in the Relational Reasoning reference code.

Follows ``backbones/resnet_small.py`` of github.com/mpatacchiola/self-supervised-relational-reasoning,
itself He et al. (2016) §4.2 with 1x1-conv + BN projection shortcuts (option B) instead of the
paper's zero-padding shortcuts: stem conv3x3(3->16)-BN-ReLU, three stages of 16/32/64 channels with
strides 1/2/2, bias-free convolutions, global average pooling, no classifier.
Parameter counts: ResNet-8 77,392; ResNet-32 466,256; ResNet-56 855,120.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import PositiveInt
from torch import nn

from relssl.models.backbone import LocalMaps
from relssl.models.conv4 import init_conv_bn
from relssl.models.registry import register_backbone

#: Blocks per stage, indexed by backbone name (depth = 6 * n + 2).
CIFAR_RESNET_LAYERS: dict[str, tuple[int, int, int]] = {
    "resnet8": (1, 1, 1),
    "resnet32": (5, 5, 5),
    "resnet56": (9, 9, 9),
}


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two conv3x3-BN layers with a residual connection; 1x1-conv + BN shortcut when the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(LocalMaps, nn.Module):
    """CIFAR-style ResNet mapping (B, C, H, W) to (B, channels[-1]) globally pooled features.

    ``layers`` gives the number of BasicBlocks per stage. State-dict keys (``conv1``, ``bn1``,
    ``layerN.i.conv1``, ``layerN.i.downsample.0``...) match the reference checkpoints. The first
    map (`forward_with_local(x, "first")`) is the stem's conv-BN-ReLU output, as in the reference
    code's Deep InfoMax.
    """

    feature_dim: int

    def __init__(
        self,
        layers: Sequence[int],
        channels: Sequence[int] = (16, 32, 64),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers) != 3 or len(channels) != 3:
            raise ValueError(f"CifarResNet needs 3 stages, got layers={layers}, channels={channels}")
        self.conv1 = _conv3x3(in_channels, channels[0])
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU(inplace=True)
        in_ch = channels[0]
        stages = []
        for n_blocks, out_ch, stride in zip(layers, channels, (1, 2, 2)):
            blocks = [BasicBlock(in_ch, out_ch, stride)]
            blocks += [BasicBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels[-1]
        self.first_channels = channels[0]
        init_conv_bn(self)

    def first_map(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's conv-BN-ReLU output, (B, 16, H, W)."""
        return self.relu(self.bn1(self.conv1(x)))

    def maps_after_first(self, first: torch.Tensor) -> torch.Tensor:
        """The three stages: the last map before global pooling, (B, 64, h, w)."""
        return self.layer3(self.layer2(self.layer1(first)))

    def pool_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling, (B, 64)."""
        return torch.flatten(self.avgpool(fmap), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.forward_map(x))


def _register(name: str, layers: tuple[int, int, int]) -> None:
    depth = 6 * layers[0] + 2

    @register_backbone(name, summary=f"CIFAR ResNet-{depth} of the Relational Reasoning reference code (64-d features)")
    def build(in_channels: PositiveInt = 3) -> CifarResNet:
        return CifarResNet(layers, in_channels=in_channels)


for _name, _layers in CIFAR_RESNET_LAYERS.items():
    _register(_name, _layers)
