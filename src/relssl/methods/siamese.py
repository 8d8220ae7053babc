"""Shared parts of the two-view methods (MoCo v2/v3, BYOL, SimSiam, NNCLR, RCL): heads and momentum target."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from relssl.config import Section
from relssl.methods.base import Method
from relssl.models import ProjectionMLP, feature_dim
from relssl.models.momentum import MomentumCopy, momentum_at


class HeadsConfig(Section):
    """Projector / predictor widths of the two-view methods (paper 2: [2048, 2048, 256] and [4096, 256])."""

    projector_hidden: list[int] = Field(default_factory=lambda: [2048, 2048])
    projector_dim: int = Field(default=256, ge=1)
    predictor_hidden: int = Field(default=4096, ge=1)

    @field_validator("projector_hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError(f"every hidden width must be >= 1; got {widths}")
        return widths


class MomentumConfig(HeadsConfig):
    """EMA key/target encoder: base coefficient and schedule ('cosine' rises to 1, BYOL; 'constant', MoCo v2)."""

    momentum: float = Field(default=0.99, ge=0, lt=1)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"


class TwoViewMethod(Method):
    """Backbone + projector (+ predictor); optionally a momentum (EMA) copy of backbone + projector.

    Projector: (fc-BN-ReLU) per hidden width, then fc-BN when `projector_last_bn` (paper 2:
    [2048, 2048, d], d = 256). Predictor: fc-BN-ReLU-fc, [predictor_hidden, d] (paper 2: 4096),
    plus a final BN when `predictor_last_bn` (MoCo v3). `last_bn_affine=False` drops the learnable
    scale and shift of those final BNs (SimSiam's and MoCo v3's official heads).
    With `momentum` set, `keys()` runs the EMA copy, updated after every optimizer step with
    the coefficient `momentum_at(momentum, step / total_steps, momentum_schedule)`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        projector_hidden: Sequence[int],
        projector_dim: int,
        predictor_hidden: int | None,
        momentum: float | None = None,
        momentum_schedule: str = "cosine",
        projector_last_bn: bool = True,
        *,
        predictor_last_bn: bool = False,
        last_bn_affine: bool = True,
    ) -> None:
        super().__init__(backbone, num_views=2)
        self.projector = ProjectionMLP(feature_dim(backbone), list(projector_hidden), projector_dim,
                                       last_bn=projector_last_bn, last_bn_affine=last_bn_affine)
        self.predictor = (
            ProjectionMLP(projector_dim, [predictor_hidden], projector_dim, last_bn=predictor_last_bn,
                          last_bn_affine=last_bn_affine)
            if predictor_hidden else None
        )
        self.momentum = momentum
        self.momentum_schedule = momentum_schedule
        self.target = MomentumCopy(nn.Sequential(backbone, self.projector)) if momentum is not None else None

    def project(self, views: torch.Tensor) -> torch.Tensor:
        """Online projections z of a batch of views."""
        return self.projector(self.backbone(views))

    def project_each(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Online projections (z1, z2) of the two stacked views, one forward pass per view (BN statistics per view)."""
        v1, v2 = views.chunk(2)
        return self.project(v1), self.project(v2)

    @torch.no_grad()
    def keys(self, views: torch.Tensor) -> torch.Tensor:
        """Key-branch projections (the momentum copy when there is one), without gradient."""
        if self.target is None:
            return self.project(views).detach()
        return self.target(views)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """The predictor's output (the methods that call this are built with one)."""
        if self.predictor is None:
            raise RuntimeError(f"{type(self).__name__} was built without a predictor")
        return self.predictor(z)

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self.target is not None and self.momentum is not None:
            m = momentum_at(self.momentum, step / max(1, total_steps), self.momentum_schedule)
            self.target.update(nn.Sequential(self.backbone, self.projector), m)
