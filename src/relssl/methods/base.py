"""What every self-supervised method shares: a backbone, a loss on augmented views, epoch hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from relssl.config import Section
from relssl.data.batch_indices import LabelledBatches
from relssl.evaluate.features import extract_features
from relssl.models.backbone import check_backbone


@dataclass
class StepOutput:
    """The loss to minimise and detached per-step metrics (tensors; read them lazily)."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class EpochContext:
    """What a method may look at when an epoch starts (DeepCluster re-clusters the whole split)."""

    epoch: int
    images: np.ndarray | None  # the whole training split, uint8 (N, H, W, 3); None when it is streamed
    normalize: Callable[[torch.Tensor], torch.Tensor]  # uint8 batch on device -> un-augmented input
    device: torch.device
    seed: int
    optimizer: torch.optim.Optimizer
    progress: bool = False
    # On the streaming path: (module, description) -> features of every training image, in order.
    extract: Callable[[nn.Module, str], torch.Tensor] | None = None

    def features(self, module: nn.Module, desc: str) -> torch.Tensor:
        """Float32 CPU features of the whole training split under `module` in eval mode, un-augmented."""
        if self.extract is not None:
            return self.extract(module, desc)
        if self.images is None:
            raise ValueError("EpochContext has neither images nor an extract function")
        return extract_features(module, self.images, normalize=self.normalize, device=self.device,
                                progress=self.progress, desc=desc)


@dataclass(frozen=True)
class TrainingSet:
    """What a method may need to know about its training split when it is built."""

    num_images: int
    num_classes: int = 0
    seed: int = 0  # the run's seed


class Method(nn.Module):
    """A self-supervised method: owns the backbone and its heads, turns views into a loss.

    The trainer augments each batch of M images into `num_views` views (view-major, K*M rows)
    and calls `training_step`; it owns data, optimisation, logging and checkpoints.
    """

    name: ClassVar[str] = "method"  # set by @register_method
    metric_names: ClassVar[tuple[str, ...]] = ()  # per-step metrics logged beside the loss
    needs_labels: ClassVar[bool] = False  # True: every training image must be labelled
    needs_feature_maps: ClassVar[bool] = False  # True: more than pooled features (refuses e.g. timm backbones)
    labelled_batches: LabelledBatches | None = None  # batch composition while labels are few (data/batch_indices.py)

    def __init__(self, backbone: nn.Module, num_views: int = 1) -> None:
        super().__init__()
        check_backbone(backbone)
        self.backbone = backbone
        self.num_views = num_views

    @classmethod
    def from_config(cls, backbone: nn.Module, config: Section | None, data: TrainingSet) -> Method:
        """Build from the method's config section (None when it has none); `data` describes the training split.

        The default passes the section alone; methods that size buffers by the training set
        (DeepCluster, RCL) or need the number of classes (supervised) override this.
        """
        build: Callable[..., Method] = cls  # subclasses take (backbone[, config])
        return build(backbone, config) if config is not None else build(backbone)

    def training_labels(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """The labels the training steps see (-1 = unknown); the semi-supervised option hides some."""
        return labels

    def training_step(
        self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> StepOutput:
        """Loss from K*M augmented views (view-major), the M labels (-1 = unknown) and dataset indices."""
        raise NotImplementedError

    def forward(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        """The training step, as the module's forward (what DistributedDataParallel wraps)."""
        return self.training_step(views, labels, indices)

    def on_epoch_start(self, context: EpochContext) -> None:
        """Called before the first step of every epoch (not when resuming mid-epoch)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step with the 1-based step count (momentum encoders update here)."""

    def diagnostics(self) -> dict[str, float]:
        """Named numbers describing the epoch that just ended (default: none); the trainer logs them.

        Called on every rank at each epoch end (and after a last, partial epoch), so it may use
        collectives; rank 0's result is written to the run's log, diagnostics.csv and metrics.json.
        """
        return {}


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent as a detached tensor (no host sync)."""
    return (logits.detach().argmax(dim=1) == targets).float().mean() * 100.0
