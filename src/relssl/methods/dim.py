"""Deep InfoMax (Hjelm et al., 2019) as the Relational Reasoning paper's Table 1 runs it (its reference code)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from relssl.config import Section
from relssl.errors import ConfigError
from relssl.losses.infomax import DIMHeads
from relssl.methods.base import Method, StepOutput
from relssl.methods.registry import register_method
from relssl.models.backbone import LocalLayer, require_local_map


class DIMConfig(Section):
    """Deep InfoMax settings; the defaults follow the Relational Reasoning reference code (docs/methods/dim.md)."""

    local_layer: LocalLayer = "first"  # M: "first" block's map (reference code) or the "last" map
    discriminator: Literal["concat", "dot"] = "concat"  # concat-and-convolve (reference) or encoder-and-dot
    negatives: Literal["roll", "all"] = "roll"  # y_i vs M_{i+1} (reference) or vs every other image
    global_weight: float = Field(default=0.5, ge=0)  # alpha
    local_weight: float = Field(default=1.0, ge=0)  # beta
    prior_weight: float = Field(default=0.1, ge=0)  # gamma
    hidden_dim: int = Field(default=256, ge=1)  # concat: hidden width of the local and global discriminators
    global_channels: tuple[PositiveInt, PositiveInt] = (64, 32)  # the global discriminator's two 3x3 convs
    embed_dim: int = Field(default=64, ge=1)  # dot: size of the shared embedding space

    @model_validator(mode="after")
    def _affordable(self) -> DIMConfig:
        if self.discriminator == "concat" and self.negatives == "all" and self.local_layer == "first":
            raise ValueError("dim.negatives: 'all' with discriminator 'concat' on the first map runs the local "
                             "discriminator at B(B-1)HW positions; use negatives 'roll' or discriminator 'dot'")
        return self


@register_method("dim", config=DIMConfig)
class DeepInfoMax(Method):
    """Maximise the JSD mutual-information estimates between the global feature y = backbone(x) and
    an intermediate feature map M of the same forward pass (local term: every position of M; global
    term: the whole of M), plus the adversarial prior-matching term on y.

    `dim.local_layer` picks M (`backbone.forward_with_local`): "first" (the first block's map
    before down-sampling, so the local term's gradient flows through the whole backbone) or "last"
    (the map that is pooled into y). The prior discriminator sits behind a gradient-reversal layer,
    so one optimizer trains both sides; the logged loss includes its loss and need not decrease.
    """

    metric_names = ("local_mi", "global_mi", "prior")
    needs_feature_maps = True  # forward_with_local: checked against the backbone at config time

    def __init__(self, backbone: nn.Module, config: DIMConfig | None = None) -> None:
        super().__init__(backbone, num_views=1)
        config = config if config is not None else DIMConfig()
        maps = require_local_map(backbone, "dim", config.local_layer)
        self._forward_with_local = maps.forward_with_local  # a bound method: the backbone is not registered twice
        self.local_layer = config.local_layer
        dim = maps.feature_dim
        self.heads = DIMHeads(
            dim, maps.local_channels(config.local_layer), embed_dim=config.embed_dim,
            hidden_dim=max(config.embed_dim, dim), beta=config.local_weight, gamma=config.prior_weight,
            alpha=config.global_weight, discriminator=config.discriminator, negatives=config.negatives,
            concat_hidden=config.hidden_dim, global_channels=config.global_channels,
        )

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        y, fmap = self._forward_with_local(views, self.local_layer)
        if self.heads.alpha > 0 and min(fmap.shape[-2:]) < 5:
            raise ConfigError(f"dim.global_weight > 0 needs a local map of at least 5x5; the {self.local_layer!r} "
                              f"map is {tuple(fmap.shape[-2:])}: set dim.global_weight=0 or dim.local_layer=first")
        out = self.heads(y.float(), fmap.float())
        metrics = {"local_mi": out.local_mi.detach(), "global_mi": out.global_mi.detach(), "prior": out.prior.detach()}
        return StepOutput(loss=out.loss, metrics=metrics)
