"""Backbones (Conv-4, CIFAR ResNet-8/32/56, torchvision ResNet-18/34/50) and heads.

``create_backbone(name, **options)`` is the entry point; every backbone returns pooled
(B, feature_dim) features and has an int ``feature_dim`` attribute.
"""

from relssl.models.cifar_resnet import CIFAR_RESNET_LAYERS, BasicBlock, CifarResNet
from relssl.models.conv4 import Conv4
from relssl.models.factory import BACKBONE_NAMES, BACKBONE_OPTIONS, create_backbone
from relssl.models.heads import ProjectionMLP, RelationHead
from relssl.models.torchvision_resnet import TORCHVISION_RESNET_SPECS, TorchvisionResNet

__all__ = [
    "BACKBONE_NAMES",
    "BACKBONE_OPTIONS",
    "CIFAR_RESNET_LAYERS",
    "TORCHVISION_RESNET_SPECS",
    "BasicBlock",
    "CifarResNet",
    "Conv4",
    "ProjectionMLP",
    "RelationHead",
    "TorchvisionResNet",
    "create_backbone",
]
