"""Relational Reasoning (Patacchiola & Storkey, NeurIPS 2020): a relation head scores pairs."""

from __future__ import annotations

import torch
from torch import nn

from relssl.losses import focal_bce, relational_pairs
from relssl.methods.base import Method, StepOutput
from relssl.models import RelationHead


class RelationalReasoning(Method):
    """Backbone + relation head trained with focal BCE on intra/inter-reasoning pairs (Eq. 1).

    The backbone embeds K views of M images; `relational_pairs` builds M*K(K-1) aggregated
    pairs (half positive) and the head's logits are scored with the focal loss of Eq. 7-8.
    """

    name = "relational"

    def __init__(
        self,
        backbone: nn.Module,
        aggregation: str = "cat",
        gamma: float = 2.0,
        head_hidden: int = 256,
        use_labels: bool = False,
    ) -> None:
        super().__init__(backbone)
        dim = backbone.feature_dim
        self.aggregation = aggregation
        self.gamma = gamma
        self.use_labels = use_labels
        self.head = RelationHead(2 * dim if aggregation == "cat" else dim, hidden=head_hidden)

    def training_step(self, views: torch.Tensor, k: int, labels: torch.Tensor | None) -> StepOutput:
        z = self.backbone(views)
        pairs, targets = relational_pairs(
            z, k, self.aggregation, labels=labels if self.use_labels else None
        )
        logits = self.head(pairs).float()
        loss = focal_bce(logits, targets, gamma=self.gamma)
        with torch.no_grad():
            accuracy = ((logits > 0).to(targets.dtype) == targets).float().mean() * 100.0
        return StepOutput(loss=loss, metrics={"pair_acc": accuracy})
