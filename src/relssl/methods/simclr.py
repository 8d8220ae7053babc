"""SimCLR (Chen et al., 2020): two views per image, a projector, and the NT-Xent loss."""

from __future__ import annotations

import torch
from torch import nn

from relssl.losses.contrastive import nt_xent
from relssl.methods.base import Method, StepOutput
from relssl.models import ProjectionMLP


class SimCLR(Method):
    """Backbone + MLP projector; NT-Xent over the 2M projections of a batch (in-batch negatives).

    `form="mean_log"` switches to the Relational Reasoning reference code's variant of the loss
    (see `relssl.losses.contrastive.nt_xent`).
    """

    name = "simclr"
    metric_names = ("pos_acc",)

    def __init__(self, backbone: nn.Module, temperature: float = 0.5, form: str = "standard",
                 projector_hidden: int = 256, projector_dim: int = 64) -> None:
        super().__init__(backbone, num_views=2)
        self.temperature = temperature
        self.form = form
        self.projector = ProjectionMLP(backbone.feature_dim, [projector_hidden], projector_dim)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z = self.projector(self.backbone(views)).float()
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, temperature=self.temperature, form=self.form)
        with torch.no_grad():  # is the other view the most similar of the 2M-1 candidates?
            zn = nn.functional.normalize(z, dim=1)
            sim = zn @ zn.T
            sim.fill_diagonal_(float("-inf"))
            m = z1.shape[0]
            partner = torch.arange(2 * m, device=z.device).roll(m)
            pos_acc = (sim.argmax(dim=1) == partner).float().mean() * 100.0
        return StepOutput(loss=loss, metrics={"pos_acc": pos_acc})
