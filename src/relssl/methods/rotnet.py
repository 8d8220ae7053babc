"""RotationNet (Gidaris et al., 2018): predict which of four rotations was applied."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from relssl.methods.base import Method, StepOutput, accuracy
from relssl.methods.registry import register_method
from relssl.models import feature_dim


def rotate_four(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations (0, 90, 180, 270 degrees) of a (B, C, H, W) batch, rotation-major, and their labels."""
    rotated = torch.cat([torch.rot90(images, r, dims=(2, 3)) for r in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


@register_method("rotnet")
class RotationNet(Method):
    """Backbone + linear classifier over the 4 rotations of each augmented image (cross-entropy).

    Each image gets one augmented view (crop, flip, colour jitter, grayscale — the same
    pipeline as every other method, so comparisons are fair) which is then shown at all four
    rotations; square inputs are assumed, as in all the paper's datasets.
    """

    metric_names = ("rot_acc",)

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(backbone, num_views=1)
        self.classifier = nn.Linear(feature_dim(backbone), 4)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        rotated, targets = rotate_four(views)
        logits = self.classifier(self.backbone(rotated)).float()
        return StepOutput(loss=F.cross_entropy(logits, targets), metrics={"rot_acc": accuracy(logits, targets)})
