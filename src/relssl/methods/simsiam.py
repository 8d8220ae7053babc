"""SimSiam (Chen & He, 2021): a shared encoder, a predictor and a stop-gradient; no momentum, no negatives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from relssl.losses.contrastive import negative_cosine
from relssl.methods.base import StepOutput
from relssl.methods.siamese import TwoViewMethod


class SimSiam(TwoViewMethod):
    """L = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2; projector ends in BN, predictor is a bottleneck (512)."""

    name = "simsiam"
    metric_names = ("cosine", "z_std")

    def __init__(self, backbone: nn.Module, projector_hidden: Sequence[int] = (2048, 2048), projector_dim: int = 2048,
                 predictor_hidden: int = 512) -> None:
        super().__init__(backbone, projector_hidden, projector_dim, predictor_hidden, momentum=None)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z1, z2 = self.project(views).chunk(2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        with torch.no_grad():  # collapse monitor: per-dimension std of normalised z, ~1/sqrt(d) when healthy
            z_std = nn.functional.normalize(z1.float(), dim=1).std(dim=0).mean()
        return StepOutput(loss=loss, metrics={"cosine": -loss.detach(), "z_std": z_std})
