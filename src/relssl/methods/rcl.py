"""Relative Contrastive Learning (Tang et al., ECCV 2022, §4): H criteria from hierarchical clustering, one loss each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from relssl.distributed import gather_no_grad
from relssl.evaluate import extract_features
from relssl.losses.relative import relative_contrastive_loss
from relssl.methods.base import EpochContext, StepOutput
from relssl.methods.nnclr import nearest_in_queue
from relssl.methods.queue import FeatureQueue
from relssl.methods.siamese import TwoViewMethod
from relssl.models import ProjectionMLP

if TYPE_CHECKING:
    from relssl.config import RCLConfig

CRITERIA_SOURCES = ("online", "kmeans", "dbscan")


class RCL(TwoViewMethod):
    """Query encoder + EMA key encoder, a support queue of keys, H criterion-specific predictors, Eq. 2-3.

    Per view pair (symmetrised): the key k = K(v') is looked up in the support queue S; its cosine
    nearest neighbour is z' (so with one criterion under which every neighbour is positive this is
    NNCLR's retrieval, §5.2). For criterion i, (z, z') is positive when the query image and the
    queue entry behind z' share a cluster at level i (labels are read from the current clustering
    through the dataset index stored with every queue row, so they follow every refinement). The
    loss is `relative_contrastive_loss(q_1..q_H, z', S, positive)`, q_i = P_i(z).

    During the first `warmup_epochs` epochs (and while the queue is empty) z' is the key itself
    and every criterion is positive: Eq. 1, the plain contrastive loss of the warm-up stage.
    Criteria: `online` = `relssl.cluster.OnlineHierarchy` (DBSCAN after warm-up, refined every
    step from the batch's keys), or the offline ablations `kmeans` / `dbscan` recomputed on all
    keys at every epoch start (Table 4). Column 0 of the clustering is the instance level; the
    criteria are columns 1..L-1 (plus column 0 with `instance_criterion`).
    """

    name = "rcl"
    metric_names = ("positive_rate", "clusters_top")

    def __init__(
        self,
        backbone: nn.Module,
        num_images: int,
        temperature: float = 0.1,
        queue_size: int = 98304,
        momentum: float = 0.99,
        momentum_schedule: str = "cosine",
        projector_hidden: Sequence[int] = (2048, 2048),
        projector_dim: int = 256,
        predictor_hidden: int = 4096,
        warmup_epochs: int = 10,
        criteria: str = "online",
        radii: Sequence[float] = (0.6, 0.7, 0.8),
        min_samples: int = 4,
        kmeans_clusters: Sequence[int] = (),
        num_predictors: int | None = None,
        instance_criterion: bool = False,
        hierarchy_options: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(backbone, projector_hidden, projector_dim, predictor_hidden=None, momentum=momentum,
                         momentum_schedule=momentum_schedule)
        levels = _clustering_levels(criteria, radii, kmeans_clusters, min_samples, hierarchy_options, num_images)
        self.num_levels = 1 + len(levels)  # column 0: every image its own cluster
        self.criteria_columns = list(range(0 if instance_criterion else 1, self.num_levels))
        h = len(self.criteria_columns)
        n_pred = h if num_predictors is None else num_predictors
        if n_pred not in (1, h):
            raise ValueError(f"rcl.num_predictors must be 1 (shared) or H={h} (one per criterion); got {n_pred}")
        self.predictors = nn.ModuleList(
            ProjectionMLP(projector_dim, [predictor_hidden], projector_dim) for _ in range(n_pred)
        )
        self.num_criteria = h
        self.temperature = temperature
        self.warmup_epochs = warmup_epochs
        self.criteria = criteria
        self.radii = [float(r) for r in radii]
        self.min_samples = min_samples
        self.kmeans_clusters = [int(c) for c in kmeans_clusters]
        self.hierarchy_options = dict(hierarchy_options or {})
        self.seed = seed
        self.num_images = num_images
        self.queue = FeatureQueue(queue_size, projector_dim)
        self.register_buffer("level_labels", torch.arange(num_images).unsqueeze(1).repeat(1, self.num_levels))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        self.hierarchy = None  # OnlineHierarchy, created at the end of the warm-up
        # Host copies read every step (no device sync); refreshed from the buffers on load.
        self._clustered = False
        self._clusters_top = num_images
        self.register_load_state_dict_post_hook(lambda module, _: module._read_clustering_state())

    def _read_clustering_state(self) -> None:
        self._clustered = bool(self.clustered)
        self._clusters_top = self._count_top_clusters()

    def _count_top_clusters(self) -> int:
        """Clusters at the coarsest level (the hierarchy keeps the counts; offline labels are counted)."""
        if not self._clustered:
            return self.num_images
        if self.hierarchy is not None:
            return self.hierarchy.num_clusters[-1]
        return int(torch.unique(self.level_labels[:, -1]).numel())

    @classmethod
    def from_config(cls, cfg: "RCLConfig", backbone: nn.Module, *, num_images: int, seed: int = 0) -> "RCL":
        """Build from the `rcl` config section."""
        return cls(backbone, num_images=num_images, seed=seed, **cfg.model_dump())

    # ------------------------------------------------------------------ clustering
    def _new_hierarchy(self):
        from relssl.cluster import OnlineHierarchy

        return OnlineHierarchy(self.num_images, self.num_levels, radii=self.radii, min_samples=self.min_samples,
                               **self.hierarchy_options)

    @torch.no_grad()
    def on_epoch_start(self, context: EpochContext) -> None:
        if context.epoch < self.warmup_epochs:
            return
        if self.criteria == "online" and self._clustered:
            return  # the online hierarchy is built once, then refined every step
        encoder = self.target.target if self.target is not None else nn.Sequential(self.backbone, self.projector)
        keys = extract_features(encoder, context.images, normalize=context.normalize, device=context.device,
                                progress=context.progress, desc=f"rcl {self.criteria} clustering")
        keys = nn.functional.normalize(keys, dim=1)
        if self.criteria == "online":
            self.hierarchy = self._new_hierarchy()
            self.hierarchy.initialize(keys.to(self.level_labels.device))
            labels = self.hierarchy.labels
        elif self.criteria == "kmeans":
            from relssl.cluster import kmeans_levels

            labels = kmeans_levels(keys, self.kmeans_clusters, seed=self.seed * 1000 + context.epoch)
        else:
            from relssl.cluster import dbscan_levels

            labels = dbscan_levels(keys, self.radii, self.min_samples)
        self.set_level_labels(labels[0] if isinstance(labels, tuple) else labels)

    @torch.no_grad()
    def set_level_labels(self, labels: torch.Tensor) -> None:
        """Use these nested (N, L) labels as the criteria from now on (column 0 = instances)."""
        self.level_labels.copy_(labels.to(self.level_labels.device))
        self.clustered.fill_(True)
        self._clustered = True
        self._clusters_top = self._count_top_clusters()

    def get_extra_state(self) -> dict[str, Any]:
        return {"hierarchy": self.hierarchy.state_dict() if self.hierarchy is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        saved = (state or {}).get("hierarchy")
        self.hierarchy = None  # a checkpoint from before the clustering must not keep a stale hierarchy
        if saved is not None:
            self.hierarchy = self._new_hierarchy()
            self.hierarchy.load_state_dict(saved)

    # ------------------------------------------------------------------ loss
    def _predictions(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = [p(z) for p in self.predictors]
        return outs * self.num_criteria if len(outs) == 1 else outs

    def _relative_term(self, qs: list[torch.Tensor], key: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        support = self.queue.features()
        if self._clustered and len(support):
            z_prime, rows = nearest_in_queue(key, self.queue)
            cols = self.level_labels[:, self.criteria_columns]
            positive = cols[indices] == cols[self.queue.sample_indices()[rows]]
        else:  # warm-up: Eq. 1 with the image's own key as the positive
            z_prime = key
            positive = torch.ones(key.shape[0], self.num_criteria, dtype=torch.bool, device=key.device)
        loss = relative_contrastive_loss(qs, z_prime, support, positive, tau=self.temperature)
        return loss, positive.float().mean()

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        z1, z2 = self.project(v1), self.project(v2)
        k1, k2 = self.keys(v1), self.keys(v2)
        indices = indices.to(self.level_labels.device)
        loss_a, rate_a = self._relative_term(self._predictions(z1), k2, indices)
        loss_b, rate_b = self._relative_term(self._predictions(z2), k1, indices)
        loss = (loss_a + loss_b) / 2
        self.queue.enqueue(k1, indices)
        if self.criteria == "online" and self.hierarchy is not None:
            all_indices = gather_no_grad(indices)
            all_keys = gather_no_grad(nn.functional.normalize(k1.float(), dim=1))
            self.hierarchy.update(all_indices, all_keys)
            self.level_labels.copy_(self.hierarchy.labels)
            self._clusters_top = self.hierarchy.num_clusters[-1]
        return StepOutput(loss=loss, metrics={"positive_rate": (rate_a + rate_b) * 50.0,
                                              "clusters_top": torch.tensor(float(self._clusters_top))})


def _clustering_levels(criteria: str, radii: Sequence[float], kmeans_clusters: Sequence[int], min_samples: int,
                       hierarchy_options: dict[str, Any] | None, num_images: int) -> list:
    """The per-level settings (radii or k-means counts), checked now: clustering only starts after the warm-up."""
    if criteria not in CRITERIA_SOURCES:
        raise ValueError(f"rcl.criteria must be one of {', '.join(CRITERIA_SOURCES)}; got {criteria!r}")
    levels = list(kmeans_clusters) if criteria == "kmeans" else list(radii)
    if not levels:
        key = "rcl.kmeans_clusters" if criteria == "kmeans" else "rcl.radii"
        raise ValueError(f"{key} must list at least one clustering level")
    if criteria == "kmeans" and (any(b >= a for a, b in zip(levels, levels[1:])) or levels[0] > num_images):
        raise ValueError(f"rcl.kmeans_clusters must decrease strictly (most clusters first) and not exceed "
                         f"the {num_images} training images; got {levels}")
    if criteria != "kmeans":
        from relssl.cluster.offline import check_radii

        check_radii(radii, name="rcl.radii")
    if criteria == "online":  # a throw-away 1-sample hierarchy checks rcl.hierarchy_options
        from relssl.cluster import OnlineHierarchy

        try:
            OnlineHierarchy(1, 1 + len(levels), radii=radii, min_samples=min_samples, **(hierarchy_options or {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"rcl.hierarchy_options: {err}") from None
    return levels
