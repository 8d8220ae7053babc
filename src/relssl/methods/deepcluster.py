"""DeepCluster (Caron et al., 2018): k-means pseudo-labels, re-assigned every epoch, as targets."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from relssl.cluster.kmeans import kmeans_assign, pca_whiten_l2
from relssl.config import Section
from relssl.distributed import all_reduce_mean, broadcast_tensor, is_main
from relssl.errors import ConfigError
from relssl.methods.base import EpochContext, Method, StepOutput, TrainingSet, accuracy
from relssl.methods.registry import register_method
from relssl.models import feature_dim


class DeepClusterConfig(Section):
    """DeepCluster baseline (Caron et al., 2018) settings."""

    num_clusters: int = Field(default=100, ge=2)
    pca_dim: int | None = Field(default=None, ge=1)  # None: min(256, feature_dim)
    kmeans_iters: int = Field(default=20, ge=1)


@register_method("deepcluster", config=DeepClusterConfig)
class DeepCluster(Method):
    """Backbone + classifier over k-means clusters of the backbone's own features.

    At the start of every epoch: features of the un-augmented training images are extracted,
    PCA-whitened to `pca_dim` and L2-normalised, clustered with k-means (seeded with the run's
    seed and the epoch, never the clock), and the classifier is re-initialised with its
    optimizer state cleared. The epoch then trains on augmented images against those
    pseudo-labels. DeepCluster samples images uniformly over clusters to stop a few large
    clusters dominating; we keep the ordinary shuffled sampler and instead weight the
    cross-entropy by inverse cluster size, which gives every cluster the same total weight.
    """

    metric_names = ("cluster_acc",)
    pseudo_labels: torch.Tensor
    cluster_weights: torch.Tensor

    def __init__(self, backbone: nn.Module, config: DeepClusterConfig | None = None, *, num_images: int) -> None:
        super().__init__(backbone, num_views=1)
        config = config if config is not None else DeepClusterConfig()
        num_clusters = config.num_clusters
        if num_clusters > num_images:
            raise ConfigError(f"deepcluster.num_clusters must be in [2, {num_images}] (the training images); "
                              f"got {num_clusters}")
        dim = feature_dim(backbone)
        self.pca_dim = min(config.pca_dim or 256, dim)
        self.num_clusters = num_clusters
        self.kmeans_iters = config.kmeans_iters
        self.classifier = nn.Linear(dim, num_clusters)
        # Saved in checkpoints, so a run resumed mid-epoch keeps that epoch's assignment.
        self.register_buffer("pseudo_labels", torch.zeros(num_images, dtype=torch.long))
        self.register_buffer("cluster_weights", torch.ones(num_clusters))

    @classmethod
    def from_config(cls, backbone: nn.Module, config: Section | None, data: TrainingSet) -> DeepCluster:
        assert config is None or isinstance(config, DeepClusterConfig)
        return cls(backbone, config, num_images=data.num_images)

    @torch.no_grad()
    def on_epoch_start(self, context: EpochContext) -> None:
        """Re-cluster: rank 0 extracts features and runs k-means, every rank receives its labels."""
        seed = context.seed * 1000 + context.epoch
        if is_main():
            features = context.features(self.backbone, "deepcluster features")
            reduced = pca_whiten_l2(features.numpy(), min(self.pca_dim, len(features)), seed=seed)
            labels, _ = kmeans_assign(reduced, self.num_clusters, seed=seed, max_iter=self.kmeans_iters)
            counts = np.bincount(labels, minlength=self.num_clusters).astype(np.float64)
            weights = np.where(counts > 0, len(labels) / (self.num_clusters * np.maximum(counts, 1)), 0.0)
            self.pseudo_labels.copy_(torch.from_numpy(labels.astype(np.int64)))
            self.cluster_weights.copy_(torch.from_numpy(weights).float())
        broadcast_tensor(self.pseudo_labels)
        broadcast_tensor(self.cluster_weights)
        self._reset_classifier(seed)
        for param in self.classifier.parameters():
            context.optimizer.state.pop(param, None)

    @torch.no_grad()
    def _reset_classifier(self, seed: int) -> None:
        """nn.Linear's default init, U(-1/sqrt(d), 1/sqrt(d)), drawn from a seeded generator (exact resume)."""
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / self.classifier.in_features**0.5
        for param in (self.classifier.weight, self.classifier.bias):
            fresh = torch.empty(param.shape).uniform_(-bound, bound, generator=gen)
            param.copy_(fresh.to(param.device))

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        targets = self.pseudo_labels[indices]
        logits = self.classifier(self.backbone(views)).float()
        # The weighted mean sum(w_i l_i) / sum(w_i) over the global batch (what cross_entropy(weight=...)
        # gives in one process): with several ranks, a per-rank weighted mean averaged by DDP would not
        # be it, so each rank divides by the mean over ranks of the weight sums.
        weights = self.cluster_weights[targets]
        per_image = F.cross_entropy(logits, targets, reduction="none")
        loss = (weights * per_image).sum() / all_reduce_mean(weights.sum())
        return StepOutput(loss=loss, metrics={"cluster_acc": accuracy(logits, targets)})
