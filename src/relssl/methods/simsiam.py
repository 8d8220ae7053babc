"""SimSiam (Chen & He, 2021): a shared encoder, a predictor and a stop-gradient; no momentum, no negatives."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from relssl.losses.contrastive import negative_cosine
from relssl.methods.base import StepOutput
from relssl.methods.registry import register_method
from relssl.methods.siamese import HeadsConfig, TwoViewMethod


class SimSiamConfig(HeadsConfig):
    """SimSiam baseline (Chen & He, 2021): projector [2048, 2048] -> 2048, bottleneck predictor 512.

    `last_bn_affine` gives the projector's final BatchNorm a learnable scale and shift (the official
    code has none; true only to load checkpoints trained before relssl followed it).
    """

    projector_dim: int = Field(default=2048, ge=1)
    predictor_hidden: int = Field(default=512, ge=1)
    last_bn_affine: bool = False


@register_method("simsiam", config=SimSiamConfig)

class SimSiam(TwoViewMethod):
    """L = -(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2; projector ends in BN, predictor is a bottleneck (512).

    As in the official code, each view is encoded in its own forward pass, so every BatchNorm
    normalises one view's batch; the projector's last BN has no affine parameters.
    """

    metric_names = ("cosine", "z_std")

    def __init__(self, backbone: nn.Module, config: SimSiamConfig | None = None) -> None:
        config = config if config is not None else SimSiamConfig()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, config.predictor_hidden,
                         momentum=None, last_bn_affine=config.last_bn_affine)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z1, z2 = self.project_each(views)
        p1, p2 = self.predict(z1), self.predict(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        with torch.no_grad():  # collapse monitor: per-dimension std of normalised z, ~1/sqrt(d) when healthy
            z_std = nn.functional.normalize(z1.float(), dim=1).std(dim=0).mean()
        return StepOutput(loss=loss, metrics={"cosine": -loss.detach(), "z_std": z_std})
