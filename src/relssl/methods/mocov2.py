"""MoCo v2 (Chen et al., 2020): momentum key encoder, a queue of negatives, InfoNCE."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from relssl.losses.contrastive import info_nce
from relssl.methods.base import StepOutput
from relssl.methods.queue import FeatureQueue
from relssl.methods.siamese import TwoViewMethod


class MoCoV2(TwoViewMethod):
    """Query = online backbone + MLP projector; key = its EMA copy; negatives = the last `queue_size` keys.

    Asymmetric as in the MoCo v2 paper (`symmetric=True` adds the swapped term, halved). The
    projector is fc-BN-ReLU-fc (MoCo v2's MLP has no BN; ours keeps the hidden BN of our shared
    projector). Single-process runs do not shuffle BN over devices; see docs/methods/mocov2.md.
    The queue starts empty, so the first step has no negatives.
    """

    name = "mocov2"
    metric_names = ("pos_acc",)

    def __init__(self, backbone: nn.Module, temperature: float = 0.2, queue_size: int = 65536,
                 momentum: float = 0.999, momentum_schedule: str = "constant",
                 projector_hidden: Sequence[int] = (2048,), projector_dim: int = 128, symmetric: bool = False) -> None:
        super().__init__(backbone, projector_hidden, projector_dim, predictor_hidden=None, momentum=momentum,
                         momentum_schedule=momentum_schedule, projector_last_bn=False)
        self.temperature = temperature
        self.symmetric = symmetric
        self.queue = FeatureQueue(queue_size, projector_dim)

    def _loss(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        negatives = self.queue.features()
        loss = info_nce(q, k, negatives, temperature=self.temperature)
        with torch.no_grad():
            qn, kn = nn.functional.normalize(q.float(), dim=1), nn.functional.normalize(k.float(), dim=1)
            pos = (qn * kn).sum(1)
            best_neg = (qn @ negatives.t()).amax(1) if len(negatives) else torch.full_like(pos, -2.0)
            acc = (pos > best_neg).float().mean() * 100.0
        return loss, acc

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        q1 = self.project(v1)
        k2 = self.keys(v2)
        loss, acc = self._loss(q1, k2)
        if self.symmetric:
            loss_b, acc_b = self._loss(self.project(v2), self.keys(v1))
            loss, acc = (loss + loss_b) / 2, (acc + acc_b) / 2
        self.queue.enqueue(k2, indices)
        return StepOutput(loss=loss, metrics={"pos_acc": acc})
