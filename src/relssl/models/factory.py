"""Build a backbone by name, validating its options at the edge.

Every backbone maps float (B, C, H, W) images to (B, feature_dim) globally average-pooled
features and exposes ``feature_dim``; none has a classifier. Weights are initialised as in the
Relational Reasoning reference code and torchvision (Kaiming normal fan_out convs, BN 1/0,
PyTorch-default Linear), never loaded from the network.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from relssl.models.cifar_resnet import CIFAR_RESNET_LAYERS, CifarResNet
from relssl.models.conv4 import POOLINGS, Conv4
from relssl.models.torchvision_resnet import TORCHVISION_RESNET_SPECS, TorchvisionResNet

BACKBONE_NAMES: tuple[str, ...] = ("conv4", "resnet8", "resnet32", "resnet56", "resnet18", "resnet34", "resnet50")

#: Options each backbone accepts, with their defaults.
BACKBONE_OPTIONS: dict[str, dict[str, Any]] = {
    "conv4": {"in_channels": 3, "pooling": "avg"},
    **{name: {"in_channels": 3} for name in CIFAR_RESNET_LAYERS},
    **{name: {"in_channels": 3, "cifar_stem": False, "zero_init_residual": False} for name in TORCHVISION_RESNET_SPECS},
}


def _check_option(name: str, key: str, value: Any) -> None:
    where = f"backbone {name!r} option {key!r}"
    if key == "in_channels":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where} must be a positive int, got {value!r}")
    elif key == "pooling":
        if value not in POOLINGS:
            raise ValueError(f"{where} must be one of {', '.join(POOLINGS)}, got {value!r}")
    elif not isinstance(value, bool):  # cifar_stem, zero_init_residual
        raise ValueError(f"{where} must be a bool, got {value!r}")


def create_backbone(name: str, **options: Any) -> nn.Module:
    """Return the backbone ``name`` (one of ``BACKBONE_NAMES``) built with ``options``.

    Options: ``in_channels`` (all, default 3); ``pooling`` ("avg" | "max", conv4, default "avg"
    as in the reference); ``cifar_stem`` and ``zero_init_residual`` (resnet18/34/50, default
    False: torchvision's ImageNet stem; turn ``cifar_stem`` on for 32x32 data). Unknown names,
    options or bad values raise ValueError naming them and the valid choices.
    """
    if name not in BACKBONE_OPTIONS:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONE_NAMES)}")
    valid = BACKBONE_OPTIONS[name]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for backbone {name!r}; "
            f"valid options: {', '.join(valid)}"
        )
    for key, value in options.items():
        _check_option(name, key, value)
    kwargs = {**valid, **options}
    if name == "conv4":
        return Conv4(**kwargs)
    if name in CIFAR_RESNET_LAYERS:
        return CifarResNet(CIFAR_RESNET_LAYERS[name], in_channels=kwargs["in_channels"])
    return TorchvisionResNet(name, **kwargs)
