"""Backbones (Conv-4, CIFAR ResNet-8/32/56, torchvision ResNet-18/34/50, any timm model) and heads.

``create_backbone(name, **options)`` is the entry point; every backbone satisfies the
``Backbone`` protocol (pooled (B, feature_dim) features and an int ``feature_dim``). Each one
registers itself in its own file with ``@register_backbone``; the imports below make the
built-in ones known.
"""

from relssl.models.backbone import Backbone, FeatureMapBackbone, feature_dim, require_feature_map
from relssl.models.cifar_resnet import CIFAR_RESNET_LAYERS, BasicBlock, CifarResNet
from relssl.models.config import BackboneConfig
from relssl.models.conv4 import Conv4
from relssl.models.heads import ProjectionMLP, RelationHead
from relssl.models.registry import (
    BACKBONE_FAMILIES,
    BACKBONES,
    BackboneSpec,
    InputSize,
    backbone_choices,
    backbone_options,
    backbone_spec,
    create_backbone,
    register_backbone,
    register_backbone_family,
)
from relssl.models.timm_backbone import TimmBackbone
from relssl.models.torchvision_resnet import TORCHVISION_RESNET_SPECS, TorchvisionResNet

__all__ = [
    "BACKBONES",
    "BACKBONE_FAMILIES",
    "CIFAR_RESNET_LAYERS",
    "TORCHVISION_RESNET_SPECS",
    "Backbone",
    "BackboneConfig",
    "BackboneSpec",
    "BasicBlock",
    "CifarResNet",
    "Conv4",
    "FeatureMapBackbone",
    "InputSize",
    "ProjectionMLP",
    "RelationHead",
    "TimmBackbone",
    "TorchvisionResNet",
    "backbone_choices",
    "backbone_options",
    "backbone_spec",
    "create_backbone",
    "feature_dim",
    "register_backbone",
    "register_backbone_family",
    "require_feature_map",
]
