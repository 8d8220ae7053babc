"""BYOL (Grill et al., 2020): predict the EMA target's projection of the other view; no negatives."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from relssl.losses.contrastive import negative_cosine
from relssl.methods.base import StepOutput
from relssl.methods.registry import register_method
from relssl.methods.siamese import MomentumConfig, TwoViewMethod


class BYOLConfig(MomentumConfig):
    """BYOL baseline (Grill et al., 2020): projector [4096] -> 256, predictor [4096], m 0.996 -> 1."""

    projector_hidden: list[int] = Field(default_factory=lambda: [4096])
    momentum: float = Field(default=0.996, ge=0, lt=1)


@register_method("byol", config=BYOLConfig)

class BYOL(TwoViewMethod):
    """L = (2 - 2 cos(p1, z'2)) + (2 - 2 cos(p2, z'1)), z' from the target network, momentum 0.996 -> 1 (cosine)."""

    metric_names = ("cosine",)

    def __init__(self, backbone: nn.Module, config: BYOLConfig | None = None) -> None:
        config = config if config is not None else BYOLConfig()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, config.predictor_hidden,
                         momentum=config.momentum, momentum_schedule=config.momentum_schedule,
                         projector_last_bn=False)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        p1, p2 = self.predict(self.project(v1)), self.predict(self.project(v2))
        z1, z2 = self.keys(v1), self.keys(v2)
        neg_cos = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        loss = 4.0 + 4.0 * neg_cos  # sum of the two 2 - 2cos terms
        return StepOutput(loss=loss, metrics={"cosine": -neg_cos.detach()})
