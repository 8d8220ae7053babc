"""BYOL (Grill et al., 2020): predict the EMA target's projection of the other view; no negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from relssl.losses.contrastive import negative_cosine
from relssl.methods.base import StepOutput
from relssl.methods.siamese import TwoViewMethod


class BYOL(TwoViewMethod):
    """L = (2 - 2 cos(p1, z'2)) + (2 - 2 cos(p2, z'1)), z' from the target network, momentum 0.996 -> 1 (cosine)."""

    name = "byol"
    metric_names = ("cosine",)

    def __init__(self, backbone: nn.Module, momentum: float = 0.996, momentum_schedule: str = "cosine",
                 projector_hidden: Sequence[int] = (4096,), projector_dim: int = 256,
                 predictor_hidden: int = 4096) -> None:
        super().__init__(backbone, projector_hidden, projector_dim, predictor_hidden, momentum=momentum,
                         momentum_schedule=momentum_schedule, projector_last_bn=False)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        p1, p2 = self.predictor(self.project(v1)), self.predictor(self.project(v2))
        z1, z2 = self.keys(v1), self.keys(v2)
        neg_cos = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        loss = 4.0 + 4.0 * neg_cos  # sum of the two 2 - 2cos terms
        return StepOutput(loss=loss, metrics={"cosine": -neg_cos.detach()})
