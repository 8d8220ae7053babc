"""Any timm model as a backbone: `timm:<name>` is `timm.create_model(name, pretrained=False, num_classes=0)`.

The features are the model's pooled output (its classifier removed) and `feature_dim` is timm's
`num_features` (or `head_hidden_size` for models with a pre-logits layer, e.g. MobileNetV3).
No weights are ever downloaded. `backbone.options` pass through to timm (`img_size`, `patch_size`,
`drop_path_rate`, ...) and are checked at start-up by building the model on the meta device, so an
option timm rejects fails before any data is read. The image side defaults to timm's pretrained
config `input_size` (an `img_size` option overrides it); models with a fixed input size (ViTs, Swin)
take no other. timm is imported only when a timm backbone is named (it takes seconds).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache, partial
from typing import Any

import torch
from pydantic import ConfigDict
from torch import nn

from relssl.errors import ConfigError
from relssl.models.registry import BackboneOptions, BackboneSpec, InputSize, register_backbone_family

__all__ = ["TIMM_PREFIX", "TimmBackbone", "TimmOptions", "timm_spec"]

TIMM_PREFIX = "timm"
#: Options relssl decides itself: no downloaded or loaded weights, no classifier, pooled features.
RESERVED_OPTIONS = ("pretrained", "num_classes", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay",
                    "features_only")


class TimmOptions(BackboneOptions):
    """Keyword options passed through to `timm.create_model`; timm itself checks them (see `probe`)."""

    model_config = ConfigDict(strict=True, extra="allow")


def create_timm_model(name: str, options: dict[str, Any]) -> nn.Module:
    """`timm.create_model(name, pretrained=False, num_classes=0, **options)`: fresh weights, pooled output."""
    import timm

    model: nn.Module = timm.create_model(name, pretrained=False, num_classes=0, **options)
    return model


def pooled_dim(model: nn.Module) -> int:
    """The size of a classifier-less timm model's output: `head_hidden_size` where it has one, else `num_features`."""
    size: Any = getattr(model, "head_hidden_size", None) or model.num_features
    return int(size)


class TimmBackbone(nn.Module):
    """A timm model without its classifier, mapping (B, C, H, W) images to (B, feature_dim) pooled features.

    The timm model is the plain submodule `model` (its state dict is timm's, under `model.`);
    `timm_name` and `timm_options` rebuild it: `timm.create_model(timm_name, num_classes=0, **timm_options)`.
    """

    feature_dim: int

    def __init__(self, timm_name: str, **timm_options: Any) -> None:
        super().__init__()
        self.timm_name = timm_name
        self.timm_options = dict(timm_options)
        self.model = create_timm_model(timm_name, self.timm_options)
        self.feature_dim = pooled_dim(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


@dataclass(frozen=True)
class Probe:
    """What building a timm model on the meta device told: its image side, whether fixed, its feature size."""

    side: int
    fixed: bool
    dim: int


def _one_line(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def _square_side(name: str, img_size: Any) -> int:
    """The side of an `img_size` option (an int, or [h, w] with h == w)."""
    if isinstance(img_size, int) and not isinstance(img_size, bool):
        return img_size
    if isinstance(img_size, (list, tuple)) and len(img_size) == 2 and img_size[0] == img_size[1]:
        return int(img_size[0])
    raise ConfigError(f"backbone 'timm:{name}' option 'img_size': relssl trains on square images; give one int, "
                      f"got {img_size!r}")


def _build_for_probe(name: str, options: dict[str, Any]) -> nn.Module:
    """The model on the meta device (no memory, no init cost), or on the CPU where meta tensors do not do."""
    try:
        with torch.device("meta"):
            return create_timm_model(name, options)
    except Exception:  # noqa: BLE001 - retried on the CPU, where the real error shows
        pass
    try:
        return create_timm_model(name, options)
    except Exception as err:  # noqa: BLE001 - timm raises TypeError, ValueError, AssertionError ... on bad options
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "no options"
        raise ConfigError(f"timm model {name!r} does not build with {shown} ({_one_line(err)}); "
                          f"check backbone.options against timm's constructor") from None


def probe(name: str, options: dict[str, Any]) -> Probe:
    """Build timm model `name` with `options` without real weights and push one image through it.

    A ConfigError names the options when timm rejects them or the output is not (B, feature_dim).
    """
    return _probe(name, json.dumps(options, sort_keys=True, default=repr))


@cache
def _probe(name: str, options_json: str) -> Probe:
    options: dict[str, Any] = json.loads(options_json)
    reserved = [key for key in RESERVED_OPTIONS if key in options]
    if reserved:
        raise ConfigError(f"backbone 'timm:{name}' option {reserved[0]!r} is set by relssl (fresh weights, no "
                          f"classifier, pooled features); drop it")
    model = _build_for_probe(name, options)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    default_side = int(cfg.get("input_size", (3, 224, 224))[-1])
    side = _square_side(name, options["img_size"]) if "img_size" in options else default_side
    fixed = bool(cfg.get("fixed_input_size", False)) and not options.get("dynamic_img_size", False)
    dim = pooled_dim(model)
    device = next(iter(model.parameters()), torch.empty(0)).device
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, int(options.get("in_chans", 3)), side, side, device=device))
    except Exception as err:  # noqa: BLE001 - any failure of the forward pass is a bad combination of options
        raise ConfigError(f"timm model {name!r} with backbone.options {options} fails on {side}x{side} images "
                          f"({_one_line(err)})") from None
    if out.ndim != 2 or out.shape[1] != dim:
        raise ConfigError(f"timm model {name!r} with backbone.options {options} gives {tuple(out.shape)} for 2 "
                          f"images, not pooled (2, {dim}) features; drop options that remove the pooling")
    return Probe(side, fixed, dim)


def check_timm_name(name: str) -> None:
    """A ConfigError for a name timm does not know, suggesting close ones from `timm.list_models`."""
    import timm

    if not name:
        raise ConfigError("backbone 'timm:' needs a timm model name, e.g. timm:resnet18 or timm:vit_tiny_patch16_224")
    if timm.is_model(name):
        return
    stem = re.match(r"[A-Za-z]*", name)
    pattern = f"*{stem.group(0) if stem else ''}*"
    family = timm.list_models(pattern)
    close = difflib.get_close_matches(name, family or timm.list_models(), n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else "none is close"
    raise ConfigError(f"unknown timm model {name!r}; {hint} (all of them: timm.list_models({pattern!r}))")


@register_backbone_family(TIMM_PREFIX, summary="any timm model without its classifier, e.g. "
                          "timm:vit_tiny_patch16_224 (fresh weights; options pass through to timm)")
def timm_spec(name: str) -> BackboneSpec:
    """The spec of `timm:<name>`: a TimmBackbone whose options timm checks, sized by its pretrained config."""
    return _timm_spec(name)


@cache
def _timm_spec(name: str) -> BackboneSpec:
    check_timm_name(name)
    return BackboneSpec(
        name=f"{TIMM_PREFIX}:{name}",
        build=partial(TimmBackbone, name),
        options=TimmOptions,
        summary=f"timm's {name} without its classifier (pooled features)",
        check=partial(_check_options, name),
        input_size=partial(_input_size, name),
        pooled_only=True,
    )


def _check_options(name: str, options: dict[str, Any]) -> None:
    probe(name, options)


def _input_size(name: str, options: dict[str, Any]) -> InputSize:
    found = probe(name, options)
    return InputSize(found.side, found.fixed)
