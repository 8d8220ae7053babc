"""State dicts that load with `strict=True` into torchvision's or timm's own model constructors.

relssl's ResNet-18/34/50 subclass torchvision's ResNet, and timm's `resnet18/34/50` use the same
parameter names, so their state dict (no `fc`: it is an Identity) is the export. A `cifar_stem`
backbone has a 3x3 stride-1 conv1 and no max-pool: the recipe swaps those two modules before
loading. Conv-4 and the CIFAR ResNet-8/32/56 (three stages of 16/32/64 channels) have no
counterpart in either library. A `timm:<name>` backbone exports its timm model's own state dict.
Every export is checked before it is written: the recipe is carried out, the weights loaded
with strict=True, and the outputs compared with the backbone's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from relssl.errors import ConfigError
from relssl.models.torchvision_resnet import TORCHVISION_RESNET_SPECS
from relssl.train.backbone_info import BackboneInfo

__all__ = ["StateDictExport", "state_dict_export"]

LIBRARIES = ("torchvision", "timm")
WORKING_FORMATS = "safetensors or onnx"


@dataclass(frozen=True)
class StateDictExport:
    """Plain tensors for `torch.save`, the Python recipe that loads them, and a builder doing the same."""

    state: dict[str, torch.Tensor]
    recipe: str  # with FILE where the saved file's path goes
    build_target: Callable[[], nn.Module]


@dataclass(frozen=True)
class _Swap:
    """One module of the library's model replaced before loading: attribute, code, and the module itself."""

    attribute: str
    code: str
    make: Callable[[], nn.Module]


def state_dict_export(backbone: nn.Module, info: BackboneInfo, library: str) -> StateDictExport:
    """The export of `backbone` for `library` ("torchvision" or "timm"); a ConfigError when none maps."""
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    name = info.architecture
    if name.startswith("timm:"):
        return _timm_model_export(backbone, name.removeprefix("timm:"), library)
    if name not in TORCHVISION_RESNET_SPECS:
        why = ("a CIFAR ResNet of three stages of 16/32/64 channels, unlike the four 64-512-channel stages of "
               "torchvision's and timm's ResNets" if name.startswith("resnet") else "no model there has its layout")
        raise ConfigError(f"backbone {name!r} has no {library} counterpart ({why}); export it with --format "
                          f"{WORKING_FORMATS}")
    swaps = _stem_swaps(backbone)
    state = _plain(backbone.state_dict())
    if library == "torchvision":
        make = f"torchvision.models.{name}()"
        head = ["import torch", "import torchvision", "", f"model = {make}",
                "model.fc = torch.nn.Identity()  # the classifier is not part of the backbone"]

        def build() -> nn.Module:
            import torchvision

            model: nn.Module = getattr(torchvision.models, name)()
            model.fc = nn.Identity()
            return _swapped(model, swaps)
    else:
        make = f'timm.create_model("{name}", num_classes=0)'
        head = ["import timm", "import torch", "", f"model = {make}  # num_classes=0: pooled features, no classifier"]

        def build() -> nn.Module:
            import timm

            return _swapped(timm.create_model(name, num_classes=0), swaps)
    recipe = "\n".join([*head, *(f"model.{s.attribute} = {s.code}" for s in swaps),
                        'model.load_state_dict(torch.load("FILE", weights_only=True), strict=True)', "model.eval()"])
    return StateDictExport(state, recipe, build)


def _stem_swaps(backbone: nn.Module) -> list[_Swap]:
    """The stem modules a relssl ResNet changed from the library's (CIFAR stem, other input channels)."""
    conv = backbone.conv1
    assert isinstance(conv, nn.Conv2d)
    swaps = []
    kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding
    if (conv.in_channels, kernel, stride) != (3, 7, 2):
        pad = padding[0] if isinstance(padding, tuple) else padding
        swaps.append(_Swap("conv1", f"torch.nn.Conv2d({conv.in_channels}, {conv.out_channels}, kernel_size={kernel}, "
                                    f"stride={stride}, padding={pad}, bias=False)",
                           lambda: nn.Conv2d(conv.in_channels, conv.out_channels, kernel, stride, pad, bias=False)))
    if isinstance(backbone.maxpool, nn.Identity):
        swaps.append(_Swap("maxpool", "torch.nn.Identity()  # the CIFAR stem has no max-pool", nn.Identity))
    return swaps


def _swapped(model: nn.Module, swaps: list[_Swap]) -> nn.Module:
    for swap in swaps:
        setattr(model, swap.attribute, swap.make())
    return model


def _plain(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (what torch.save should hold: no views into other storage)."""
    return {key: value.detach().cpu().contiguous().clone() for key, value in state.items()}


def _timm_model_export(backbone: nn.Module, timm_name: str, library: str) -> StateDictExport:
    """A `timm:<name>` backbone: the state dict of the timm model inside it, for timm only."""
    if library != "timm":
        raise ConfigError(f"backbone 'timm:{timm_name}' is a timm model with no torchvision counterpart in relssl's "
                          f"export; use --format timm, {WORKING_FORMATS}")
    model = _inner_timm_model(backbone)
    state = _plain(model.state_dict())
    options: dict[str, Any] = dict(getattr(backbone, "timm_options", {}))
    shown = "".join(f", {key}={value!r}" for key, value in options.items())
    recipe = "\n".join(["import timm", "import torch", "",
                        f'model = timm.create_model("{timm_name}", num_classes=0{shown})',
                        'model.load_state_dict(torch.load("FILE", weights_only=True), strict=True)', "model.eval()"])

    def build() -> nn.Module:
        import timm

        return timm.create_model(timm_name, num_classes=0, **options)

    return StateDictExport(state, recipe, build)


def _inner_timm_model(backbone: nn.Module) -> nn.Module:
    """The timm model a `timm:` backbone wraps (the backbone itself when it is one)."""
    if hasattr(backbone, "pretrained_cfg"):
        return backbone
    found = [child for child in backbone.children() if hasattr(child, "pretrained_cfg")]
    if len(found) != 1:
        raise ConfigError(f"cannot find the timm model inside {type(backbone).__name__}; use --format "
                          f"{WORKING_FORMATS}")
    return found[0]
