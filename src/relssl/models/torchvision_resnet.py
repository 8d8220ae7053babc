"""ImageNet ResNet-18/34/50 from torchvision, without the classifier.

The reference code's ResNet-34 (used for STL-10 in Patacchiola & Storkey 2020) is torchvision's
with ``fc`` removed and the ImageNet stem kept; we subclass ``torchvision.models.ResNet`` so our
state dicts load into ``torchvision.models.resnetXX()`` (only ``fc.*`` missing) and back.
"""

from __future__ import annotations

from functools import partial

import torch
from pydantic import PositiveInt
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from relssl.models.backbone import LocalMaps
from relssl.models.registry import register_backbone

#: (block, blocks per stage) for each name, as in torchvision.models.resnet.
TORCHVISION_RESNET_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


class TorchvisionResNet(LocalMaps, ResNet):
    """torchvision ResNet returning (B, 512 * expansion) pooled features; ``fc`` is an Identity.

    ``cifar_stem=True`` swaps the 7x7/stride-2 conv1 and the max-pool for a 3x3/stride-1 conv1
    and no max-pool (the usual choice for 32x32 images, e.g. SimCLR's CIFAR ResNets); the default
    False keeps torchvision's ImageNet stem, as the reference code does for STL-10 (96x96).
    ``in_channels`` != 3 replaces conv1 likewise. Init is torchvision's (Kaiming normal fan_out).
    The first map (`forward_with_local(x, "first")`) is the stem's ReLU output before the
    max-pool (64 channels), as in the Relational Reasoning reference code's Deep InfoMax.
    """

    feature_dim: int

    def __init__(
        self,
        name: str,
        in_channels: PositiveInt = 3,
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        if name not in TORCHVISION_RESNET_SPECS:
            raise ValueError(f"unknown torchvision ResNet {name!r}; valid: {', '.join(TORCHVISION_RESNET_SPECS)}")
        block, layers = TORCHVISION_RESNET_SPECS[name]
        super().__init__(block, list(layers), zero_init_residual=zero_init_residual)
        self.feature_dim = 512 * block.expansion  # torchvision's fc.in_features
        self.fc = nn.Identity()  # no parameters, so no fc.* keys in the state dict
        if cifar_stem or in_channels != 3:
            kernel, stride = (3, 1) if cifar_stem else (7, 2)
            self.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=kernel // 2, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if cifar_stem:
            self.maxpool = nn.Identity()
        self.cifar_stem = cifar_stem
        self.first_channels = self.conv1.out_channels

    def first_map(self, x: torch.Tensor) -> torch.Tensor:
        """The stem's conv-BN-ReLU output before the max-pool, (B, 64, H', W')."""
        return self.relu(self.bn1(self.conv1(x)))

    def maps_after_first(self, first: torch.Tensor) -> torch.Tensor:
        """The max-pool and the four stages: the last map before global pooling, (B, feature_dim, h, w)."""
        return self.layer4(self.layer3(self.layer2(self.layer1(self.maxpool(first)))))

    def pool_features(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling (``fc`` is an Identity), (B, feature_dim)."""
        return self.fc(torch.flatten(self.avgpool(fmap), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.forward_map(x))


for _name in TORCHVISION_RESNET_SPECS:
    register_backbone(_name, summary=f"torchvision's {_name} without fc (`cifar_stem` for small images)")(
        partial(TorchvisionResNet, _name))
