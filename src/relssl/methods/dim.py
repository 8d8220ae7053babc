"""Deep InfoMax (Hjelm et al., 2019), the Relational Reasoning paper's DIM(L) baseline."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from relssl.config import Section
from relssl.losses.infomax import DIMHeads
from relssl.methods.base import Method, StepOutput
from relssl.methods.registry import register_method
from relssl.models import require_feature_map


class DIMConfig(Section):
    """Deep InfoMax baseline (Hjelm et al., 2019) settings: DIM(L) with the prior term."""

    local_weight: float = Field(default=1.0, ge=0)  # beta
    prior_weight: float = Field(default=0.1, ge=0)  # gamma
    embed_dim: int = Field(default=64, ge=1)


@register_method("dim", config=DIMConfig)
class DeepInfoMax(Method):
    """Maximise local mutual information (JSD estimator) between the global feature and the
    positions of the backbone's last feature map, plus the adversarial prior-matching term.

    The global feature is the pooled last feature map (exactly the backbone's output), the
    local features are that map's positions (`backbone.forward_map`); DIM(L) weights
    beta = `local_weight` = 1 and gamma = `prior_weight` = 0.1, no global MI term.
    The prior discriminator sits behind a gradient-reversal layer, so one optimizer trains both
    sides; the logged loss therefore includes the discriminator's loss and need not decrease.
    """

    metric_names = ("local_mi", "prior")

    def __init__(self, backbone: nn.Module, config: DIMConfig | None = None) -> None:
        super().__init__(backbone, num_views=1)
        config = config if config is not None else DIMConfig()
        maps = require_feature_map(backbone, "dim")
        self._forward_map = maps.forward_map  # a bound method, so the backbone is not registered twice
        dim = maps.feature_dim
        self.heads = DIMHeads(dim, dim, embed_dim=config.embed_dim, hidden_dim=max(config.embed_dim, dim),
                              beta=config.local_weight, gamma=config.prior_weight)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        fmap = self._forward_map(views)
        y = fmap.mean(dim=(2, 3))
        out = self.heads(y.float(), fmap.float())
        return StepOutput(loss=out.loss, metrics={"local_mi": out.local_mi.detach(), "prior": out.prior.detach()})
