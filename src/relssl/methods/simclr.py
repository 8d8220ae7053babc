"""SimCLR (Chen et al., 2020): two views per image, a projector, and the NT-Xent loss."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from relssl.config import Section
from relssl.distributed import gather_with_grad
from relssl.losses.contrastive import nt_xent
from relssl.methods.base import Method, StepOutput
from relssl.methods.registry import register_method
from relssl.models import ProjectionMLP, feature_dim


class SimCLRConfig(Section):
    """SimCLR baseline (Chen et al., 2020) settings."""

    temperature: float = Field(default=0.5, gt=0)
    form: Literal["standard", "mean_log"] = "standard"
    projector_hidden: int = Field(default=256, ge=1)
    projector_dim: int = Field(default=64, ge=1)


@register_method("simclr", config=SimCLRConfig)
class SimCLR(Method):
    """Backbone + MLP projector; NT-Xent over the 2M projections of a batch (in-batch negatives).

    `form="mean_log"` switches to the Relational Reasoning reference code's variant of the loss
    (see `relssl.losses.contrastive.nt_xent`).
    """

    metric_names = ("pos_acc",)

    def __init__(self, backbone: nn.Module, config: SimCLRConfig | None = None) -> None:
        super().__init__(backbone, num_views=2)
        config = config if config is not None else SimCLRConfig()
        self.temperature = config.temperature
        self.form = config.form
        self.projector = ProjectionMLP(feature_dim(backbone), [config.projector_hidden], config.projector_dim)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z1, z2 = self.projector(self.backbone(views)).float().chunk(2)
        # Negatives over the global batch: every rank gathers all projections (gradients flow back to
        # each rank's own rows) and computes the whole batch's loss, which the "mean_log" form needs.
        z1, z2 = gather_with_grad(z1), gather_with_grad(z2)
        z = torch.cat((z1, z2))
        loss = nt_xent(z1, z2, temperature=self.temperature, form=self.form)
        with torch.no_grad():  # is the other view the most similar of the 2M-1 candidates?
            zn = nn.functional.normalize(z, dim=1)
            sim = zn @ zn.T
            sim.fill_diagonal_(float("-inf"))
            m = z1.shape[0]
            partner = torch.arange(2 * m, device=z.device).roll(m)
            pos_acc = (sim.argmax(dim=1) == partner).float().mean() * 100.0
        return StepOutput(loss=loss, metrics={"pos_acc": pos_acc})
