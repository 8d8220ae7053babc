"""What every self-supervised method shares: a backbone and a loss on a uint8 batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class StepOutput:
    """The loss to minimise and detached per-step metrics (tensors; read them lazily)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    """A self-supervised method: owns the backbone and its heads, turns views into a loss.

    Subclasses implement `training_step`; the trainer owns data, optimisation and logging.
    """

    name: str = "method"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def training_step(self, views: torch.Tensor, k: int, labels: torch.Tensor | None) -> StepOutput:
        """Compute the loss from K*M augmented views in view-major order."""
        raise NotImplementedError
