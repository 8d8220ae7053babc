"""MoCo v3 (Chen, Xie & He, 2021): symmetric in-batch InfoNCE, predictor on the query branch, momentum keys."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from relssl.distributed import gather_no_grad, rank
from relssl.losses.contrastive import cross_view_nce
from relssl.methods.base import StepOutput
from relssl.methods.registry import register_method
from relssl.methods.siamese import MomentumConfig, TwoViewMethod


class MoCoV3Config(MomentumConfig):
    """MoCo v3 baseline (Chen, Xie & He, 2021); tau 0.2 (the MoCo v3 paper uses 1.0 for its ResNet-50).

    As in the official code, the projector and the predictor each end in fc-BN where the BN has no
    affine parameters (`predictor_last_bn`, `last_bn_affine`; the RCL paper's predictor ends in fc).
    """

    temperature: float = Field(default=0.2, gt=0)
    predictor_last_bn: bool = True
    last_bn_affine: bool = False


@register_method("mocov3", config=MoCoV3Config)

class MoCoV3(TwoViewMethod):
    """q = predictor(projector(backbone(v))); keys from the EMA copy of backbone + projector, gathered over ranks.

    L = 2 tau (ctr(q1, k2) + ctr(q2, k1)), ctr the in-batch InfoNCE (`cross_view_nce`); the 2 tau
    factor on each term is the MoCo v3 paper's, so the gradient scale does not depend on tau. The
    terms are summed, not averaged, as in the official code. Each view has its own forward pass
    (BatchNorm statistics per view), on the query and on the key branch.
    """

    metric_names = ("pos_acc",)

    def __init__(self, backbone: nn.Module, config: MoCoV3Config | None = None) -> None:
        config = config if config is not None else MoCoV3Config()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, config.predictor_hidden,
                         momentum=config.momentum, momentum_schedule=config.momentum_schedule,
                         predictor_last_bn=config.predictor_last_bn, last_bn_affine=config.last_bn_affine)
        self.temperature = config.temperature

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        m = v1.shape[0]
        q1, q2 = self.predict(self.project(v1)), self.predict(self.project(v2))
        k1, k2 = gather_no_grad(self.keys(v1)), gather_no_grad(self.keys(v2))
        offset = rank() * m
        loss = (cross_view_nce(q1, k2, self.temperature, offset) + cross_view_nce(q2, k1, self.temperature, offset))
        loss = loss * (2.0 * self.temperature)  # MoCo v3: each term scaled by 2 tau, then summed
        with torch.no_grad():  # argmax of the loss's logits, i.e. of cosines (keys are not unit vectors)
            sims = nn.functional.normalize(q1.detach().float(), dim=1) @ nn.functional.normalize(k2.float(), dim=1).t()
            hits = sims.argmax(1) == torch.arange(m, device=q1.device) + offset
            acc = hits.float().mean() * 100.0
        return StepOutput(loss=loss, metrics={"pos_acc": acc})
