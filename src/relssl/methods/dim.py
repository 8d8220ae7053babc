"""Deep InfoMax (Hjelm et al., 2019), the Relational Reasoning paper's DIM(L) baseline."""

from __future__ import annotations

import torch
from torch import nn

from relssl.losses.infomax import DIMHeads
from relssl.methods.base import Method, StepOutput


class DeepInfoMax(Method):
    """Maximise local mutual information (JSD estimator) between the global feature and the
    positions of the backbone's last feature map, plus the adversarial prior-matching term.

    The global feature is the pooled last feature map (exactly the backbone's output), the
    local features are that map's positions (`backbone.forward_map`); DIM(L) weights
    beta = `local_weight` = 1 and gamma = `prior_weight` = 0.1, no global MI term.
    The prior discriminator sits behind a gradient-reversal layer, so one optimizer trains both
    sides; the logged loss therefore includes the discriminator's loss and need not decrease.
    """

    name = "dim"
    metric_names = ("local_mi", "prior")

    def __init__(self, backbone: nn.Module, local_weight: float = 1.0, prior_weight: float = 0.1,
                 embed_dim: int = 64) -> None:
        super().__init__(backbone, num_views=1)
        if not hasattr(backbone, "forward_map"):
            raise ValueError(f"dim needs a backbone with forward_map (local features); {type(backbone).__name__} has none")
        dim = backbone.feature_dim
        self.heads = DIMHeads(dim, dim, embed_dim=embed_dim, hidden_dim=max(embed_dim, dim),
                              beta=local_weight, gamma=prior_weight)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        fmap = self.backbone.forward_map(views)
        y = fmap.mean(dim=(2, 3))
        out = self.heads(y.float(), fmap.float())
        return StepOutput(loss=out.loss, metrics={"local_mi": out.local_mi.detach(), "prior": out.prior.detach()})
