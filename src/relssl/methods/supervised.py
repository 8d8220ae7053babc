"""Supervised upper bound: the backbone trained with labels (cross-entropy), same data path."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from relssl.config import Section
from relssl.errors import ConfigError
from relssl.methods.base import Method, StepOutput, TrainingSet, accuracy
from relssl.methods.registry import register_method
from relssl.models import feature_dim


@register_method("supervised")
class Supervised(Method):
    """Backbone + linear classifier trained on the true labels of augmented images.

    As in the paper's upper bound, the learned backbone is then evaluated like every other
    method (a fresh linear layer on frozen features).
    """

    metric_names = ("acc",)
    needs_labels = True

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__(backbone, num_views=1)
        if num_classes < 2:
            raise ConfigError(f"supervised training needs a labelled split with at least 2 classes; got {num_classes}")
        self.classifier = nn.Linear(feature_dim(backbone), num_classes)

    @classmethod
    def from_config(cls, backbone: nn.Module, config: Section | None, data: TrainingSet) -> Supervised:
        return cls(backbone, num_classes=data.num_classes)

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        logits = self.classifier(self.backbone(views)).float()
        return StepOutput(loss=F.cross_entropy(logits, labels), metrics={"acc": accuracy(logits, labels)})
