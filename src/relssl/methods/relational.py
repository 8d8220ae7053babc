"""Relational Reasoning (Patacchiola & Storkey, NeurIPS 2020): a relation head scores pairs."""

from __future__ import annotations

import torch
from torch import nn

from relssl.losses import focal_bce, relational_pairs
from relssl.methods.base import Method, StepOutput
from relssl.models import ProjectionMLP, RelationHead

HEADS = ("mlp", "dot", "encoder")


class RelationalReasoning(Method):
    """Backbone + relation head trained with focal BCE on intra/inter-reasoning pairs (Eq. 1).

    The backbone embeds K views of M images; `relational_pairs` builds M*K(K-1) aggregated
    pairs (half positive) and the head's logits are scored with the focal loss of Eq. 7-8.
    Head ablations (paper Appendix B.8): `mlp` is the relation module; `dot` removes it and
    scores a pair by the dot product of its two representations; `encoder` first maps each
    representation through an MLP encoder (as SimCLR's projector) and then takes the dot product.
    """

    name = "relational"
    metric_names = ("pair_acc",)

    def __init__(
        self,
        backbone: nn.Module,
        k: int = 32,
        aggregation: str = "cat",
        gamma: float = 2.0,
        head: str = "mlp",
        head_hidden: int = 256,
        encoder_dim: int = 64,
        use_labels: bool = False,
    ) -> None:
        super().__init__(backbone, num_views=k)
        if head not in HEADS:
            raise ValueError(f"relational.head must be one of {', '.join(HEADS)}; got {head!r}")
        if head != "mlp" and aggregation != "cat":
            raise ValueError("relational.head 'dot' and 'encoder' score the two members of a pair, so they need aggregation 'cat'")
        dim = backbone.feature_dim
        self.aggregation = aggregation
        self.gamma = gamma
        self.head_kind = head
        self.use_labels = use_labels
        if head == "mlp":
            self.head = RelationHead(2 * dim if aggregation == "cat" else dim, hidden=head_hidden)
        elif head == "encoder":
            self.encoder = ProjectionMLP(dim, [head_hidden], encoder_dim)

    def pair_logits(self, z: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Relation scores (logits) and targets of every pair built from the K*M features `z`."""
        if self.head_kind == "encoder":
            z = self.encoder(z)
        pairs, targets = relational_pairs(z, self.num_views, self.aggregation, labels=labels)
        if self.head_kind == "mlp":
            return self.head(pairs), targets
        left, right = pairs.chunk(2, dim=1)
        return (left * right).sum(dim=1), targets

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z = self.backbone(views)
        logits, targets = self.pair_logits(z, labels if self.use_labels else None)
        logits = logits.float()
        loss = focal_bce(logits, targets, gamma=self.gamma)
        with torch.no_grad():
            pair_acc = ((logits > 0).to(targets.dtype) == targets).float().mean() * 100.0
        return StepOutput(loss=loss, metrics={"pair_acc": pair_acc})
