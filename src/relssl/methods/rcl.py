"""Relative Contrastive Learning (Tang et al., ECCV 2022, §4): H criteria from hierarchical clustering, one loss each."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from relssl.cluster import OnlineHierarchy, adaptive_radii, dbscan_levels, kmeans_levels
from relssl.cluster.hierarchy import default_radii
from relssl.cluster.offline import check_radii
from relssl.cluster.radii import check_quantiles
from relssl.config import Section
from relssl.distributed import (
    all_reduce_mean,
    broadcast_object,
    broadcast_tensor,
    gather_no_grad,
    is_distributed,
    is_main,
)
from relssl.errors import ConfigError
from relssl.losses.relative import relative_contrastive_loss
from relssl.methods.base import EpochContext, StepOutput, TrainingSet
from relssl.methods.nnclr import nearest_in_queue
from relssl.methods.queue import FeatureQueue
from relssl.methods.registry import register_method
from relssl.methods.siamese import MomentumConfig, TwoViewMethod
from relssl.models import ProjectionMLP


class RCLConfig(MomentumConfig):
    """RCL (Tang et al., 2022) settings; paper defaults unless noted (docs/methods/rcl.md lists every choice)."""

    temperature: float = Field(default=0.1, gt=0)  # tau of Eq. 3
    queue_size: int = Field(default=98304, ge=1)  # support queue, 1.5 * 2^16
    warmup_epochs: int = Field(default=10, ge=0)  # epochs of the plain contrastive loss before clustering
    criteria: Literal["online", "kmeans", "dbscan"] = "online"  # online hierarchy or the offline ablations
    # DBSCAN eps per level, finest first: `adaptive` from the clustered keys (quantiles of their
    # min_samples-th-neighbour distances, see relssl.cluster.radii), `fixed` = `radii` (the paper's).
    radii_rule: Literal["adaptive", "fixed"] = "adaptive"
    radii: list[float] = Field(default_factory=lambda: [0.6, 0.7, 0.8])  # the fixed rule's radii
    radius_quantiles: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2])  # the adaptive rule's
    min_samples: int = Field(default=4, ge=1)
    kmeans_clusters: list[int] = Field(default_factory=list)  # clusters per level for criteria=kmeans, most first
    num_predictors: int | None = Field(default=None, ge=1)  # None: one per criterion (H); 1: shared
    instance_criterion: bool = False  # also use the instance level (column 0) as a criterion
    hierarchy_options: dict[str, Any] = {}  # further relssl.cluster.OnlineHierarchy options, e.g. merge_threshold

    @model_validator(mode="before")
    @classmethod
    def _radii_imply_fixed(cls, data: Any) -> Any:
        """`radii` given without `radii_rule` means those radii (configs from before the rule existed)."""
        if isinstance(data, dict) and "radii" in data and "radii_rule" not in data:
            return {**data, "radii_rule": "fixed"}
        return data

    @property
    def levels(self) -> list[float] | list[int]:
        """The clustering levels, finest first: k-means cluster counts, DBSCAN radii or radius quantiles."""
        if self.criteria == "kmeans":
            return list(self.kmeans_clusters)
        return list(self.radii) if self.radii_rule == "fixed" else list(self.radius_quantiles)

    @property
    def num_criteria(self) -> int:
        """H: one criterion per clustering level, plus the instance level with `instance_criterion`."""
        return len(self.levels) + int(self.instance_criterion)

    @model_validator(mode="after")
    def _levels_fit(self) -> RCLConfig:
        """Every level setting is checked here, at start-up: clustering itself only starts after the warm-up."""
        try:
            check_radii(self.radii, name="rcl.radii")
        except ValueError as err:
            raise ValueError(f"{err} (unit-sphere distances, finest level first)") from None
        try:
            check_quantiles(self.radius_quantiles, name="rcl.radius_quantiles")
        except ValueError as err:
            raise ValueError(f"{err} (shares of DBSCAN core points per level)") from None
        if self.criteria == "kmeans":
            k = self.kmeans_clusters
            if not k or any(c < 2 for c in k) or any(b >= a for a, b in zip(k, k[1:])):
                raise ValueError(f"rcl.kmeans_clusters must list >= 2 clusters per level, strictly decreasing; got {k}")
        h = self.num_criteria
        if self.num_predictors not in (None, 1, h):
            raise ValueError(f"rcl.num_predictors must be 1 (shared) or H={h} (one per criterion); got {self.num_predictors}")
        if self.criteria == "online":  # a throw-away 1-sample hierarchy checks rcl.hierarchy_options
            try:
                OnlineHierarchy(1, 1 + len(self.levels), radii=default_radii(1 + len(self.levels)),
                                min_samples=self.min_samples, **self.hierarchy_options)
            except (TypeError, ValueError) as err:
                raise ValueError(f"rcl.hierarchy_options: {err}") from None
        return self


@register_method("rcl", config=RCLConfig)
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
    criteria are columns 1..L-1 (plus column 0 with `instance_criterion`). DBSCAN's radii follow
    `radii_rule`: adaptive ones are read off the keys being clustered (`relssl.cluster.radii`).
    `diagnostics()` reports per level: clusters, largest cluster, radius, positive and queue shares.
    """

    metric_names = ("positive_rate", "clusters_top")
    level_labels: torch.Tensor
    clustered: torch.Tensor

    def __init__(self, backbone: nn.Module, config: RCLConfig | None = None, *, num_images: int, seed: int = 0) -> None:
        config = config if config is not None else RCLConfig()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, predictor_hidden=None,
                         momentum=config.momentum, momentum_schedule=config.momentum_schedule)
        if config.criteria == "kmeans" and config.kmeans_clusters[0] > num_images:
            raise ConfigError(f"rcl.kmeans_clusters must not exceed the {num_images} training images; "
                              f"got {config.kmeans_clusters}")
        self.config = config
        self.num_levels = 1 + len(config.levels)  # column 0: every image its own cluster
        self.criteria_columns = list(range(0 if config.instance_criterion else 1, self.num_levels))
        h = len(self.criteria_columns)
        n_pred = h if config.num_predictors is None else config.num_predictors
        self.predictors = nn.ModuleList(
            ProjectionMLP(config.projector_dim, [config.predictor_hidden], config.projector_dim) for _ in range(n_pred)
        )
        self.num_criteria = h
        self.temperature = config.temperature
        self.warmup_epochs = config.warmup_epochs
        self.criteria = config.criteria
        self.seed = seed
        self.num_images = num_images
        self.queue = FeatureQueue(config.queue_size, config.projector_dim)
        self.register_buffer("level_labels", torch.arange(num_images).unsqueeze(1).repeat(1, self.num_levels))
        self.register_buffer("clustered", torch.zeros((), dtype=torch.bool))
        self.hierarchy: OnlineHierarchy | None = None  # created at the end of the warm-up
        # DBSCAN radii in use, finest first: the fixed rule's from the start, the adaptive rule's once chosen.
        fixed = config.criteria != "kmeans" and config.radii_rule == "fixed"
        self.radii: tuple[float, ...] | None = tuple(config.radii) if fixed else None
        self._positive_sum: torch.Tensor | None = None  # per criterion, summed over this epoch's steps
        self._queue_same_sum: torch.Tensor | None = None
        self._diag_steps = 0
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
    def from_config(cls, backbone: nn.Module, config: Section | None, data: TrainingSet) -> RCL:
        """Build from the `rcl` config section for a training split of `data.num_images` images."""
        assert config is None or isinstance(config, RCLConfig)
        return cls(backbone, config, num_images=data.num_images, seed=data.seed)

    # ------------------------------------------------------------------ clustering
    def _new_hierarchy(self, radii: tuple[float, ...]) -> OnlineHierarchy:
        cfg = self.config
        return OnlineHierarchy(self.num_images, self.num_levels, radii=radii, min_samples=cfg.min_samples,
                               **cfg.hierarchy_options)

    def _choose_radii(self, keys: torch.Tensor) -> tuple[float, ...]:
        """The DBSCAN radii for these keys: the fixed rule's, or the adaptive rule's quantiles (rank 0)."""
        cfg = self.config
        if cfg.radii_rule == "fixed":
            return tuple(cfg.radii)
        return adaptive_radii(keys, cfg.radius_quantiles, cfg.min_samples)

    @torch.no_grad()
    def on_epoch_start(self, context: EpochContext) -> None:
        """Cluster after the warm-up (online: once; offline criteria: every epoch).

        Rank 0 extracts the keys, chooses the radii and clusters; every rank receives the result
        (the radii and the online hierarchy's whole state, or the offline labels), so all ranks
        hold identical labels.
        """
        self._reset_diagnostics()
        if context.epoch < self.warmup_epochs:
            return
        if self.criteria == "online" and self._clustered:
            return  # the online hierarchy is built once, then refined every step
        labels = self.level_labels.clone()
        hierarchy: OnlineHierarchy | None = None
        radii = self.radii
        if is_main():
            encoder = self.target.target if self.target is not None else nn.Sequential(self.backbone, self.projector)
            keys = context.features(encoder, f"rcl {self.criteria} clustering")
            keys = nn.functional.normalize(keys.to(self.level_labels.device), dim=1)
            if self.criteria != "kmeans":
                radii = self._choose_radii(keys)
            if self.criteria == "online":
                assert radii is not None
                hierarchy = self._new_hierarchy(radii)
                hierarchy.initialize(keys)
            elif self.criteria == "kmeans":
                labels, _ = kmeans_levels(keys, self.config.kmeans_clusters, seed=self.seed * 1000 + context.epoch)
            else:
                assert radii is not None
                labels, _ = dbscan_levels(keys, radii, self.config.min_samples)
        self.radii = broadcast_object(radii)
        if self.criteria == "online":
            if is_distributed():
                state = broadcast_object(hierarchy.state_dict() if hierarchy is not None else None)
                if hierarchy is None and state is not None:  # another rank: rebuild rank 0's hierarchy
                    assert self.radii is not None
                    hierarchy = self._new_hierarchy(self.radii)
                    hierarchy.load_state_dict(state)
            assert hierarchy is not None
            self.hierarchy = hierarchy
            labels = hierarchy.labels
        else:
            labels = broadcast_tensor(labels.to(self.level_labels.device))
        self.set_level_labels(labels)

    @torch.no_grad()
    def set_level_labels(self, labels: torch.Tensor) -> None:
        """Use these nested (N, L) labels as the criteria from now on (column 0 = instances)."""
        self.level_labels.copy_(labels.to(self.level_labels.device))
        self.clustered.fill_(True)
        self._clustered = True
        self._clusters_top = self._count_top_clusters()

    def get_extra_state(self) -> dict[str, Any]:
        return {"hierarchy": self.hierarchy.state_dict() if self.hierarchy is not None else None,
                "radii": list(self.radii) if self.radii is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        state = state or {}
        saved, radii = state.get("hierarchy"), state.get("radii")
        # Checkpoints from before the adaptive rule hold no radii: they ran the config's fixed ones.
        if radii is not None or saved is not None or self.config.radii_rule == "fixed":
            self.radii = tuple(float(r) for r in radii) if radii is not None else tuple(self.config.radii)
        else:
            self.radii = None  # a warm-up checkpoint of the adaptive rule: radii are chosen after it
        self.hierarchy = None  # a checkpoint from before the clustering must not keep a stale hierarchy
        if saved is not None:
            assert self.radii is not None
            self.hierarchy = self._new_hierarchy(self.radii)
            self.hierarchy.load_state_dict(saved)

    # ------------------------------------------------------------------ diagnostics
    def _reset_diagnostics(self) -> None:
        self._positive_sum = self._queue_same_sum = None
        self._diag_steps = 0

    @torch.no_grad()
    def _accumulate(self, positives: list[torch.Tensor], query: torch.Tensor) -> None:
        """Add this step's per-criterion positive share and queue share (device tensors, no host sync).

        positive: the share of (query, z') pairs positive under each criterion (both directions);
        queue share: per criterion, the mean share of the support queue in the query image's cluster.
        """
        pos = torch.cat(positives).float().mean(dim=0)
        cols = self.level_labels[:, self.criteria_columns]
        support = self.queue.sample_indices().to(cols.device)
        same = torch.zeros_like(pos)
        if support.numel():
            # queue members per query cluster from the sorted queue labels: O(Q log Q) per criterion,
            # no dataset-sized count array and no host sync (a bincount would allocate N and sync on CUDA)
            ranked = cols[support].sort(dim=0).values.t().contiguous()  # (H, Q)
            mine = cols[query].t().contiguous()  # (H, B)
            count = torch.searchsorted(ranked, mine, right=True) - torch.searchsorted(ranked, mine)
            same = count.float().mean(dim=1) / support.numel()
        if self._positive_sum is None or self._queue_same_sum is None:
            self._positive_sum, self._queue_same_sum = pos, same
        else:
            self._positive_sum, self._queue_same_sum = self._positive_sum + pos, self._queue_same_sum + same
        self._diag_steps += 1

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        """Per criterion level l{c}: clusters, largest cluster's share of the images, the DBSCAN radius,
        and over this epoch's steps the positive share and queue share (mean over ranks; see `_accumulate`).

        Every rank must call it (one all-reduce)."""
        h = len(self.criteria_columns)
        shares = torch.zeros(2, h, device=self.level_labels.device)
        if self._positive_sum is not None and self._queue_same_sum is not None and self._diag_steps:
            shares = torch.stack([self._positive_sum, self._queue_same_sum]) / self._diag_steps
        shares = all_reduce_mean(shares).cpu()
        out: dict[str, float] = {}
        for j, c in enumerate(self.criteria_columns):
            sizes = torch.bincount(self.level_labels[:, c])
            out[f"clusters_l{c}"] = float((sizes > 0).sum())
            out[f"largest_share_l{c}"] = float(sizes.max()) / self.num_images
            if self.radii is not None and c >= 1:
                out[f"radius_l{c}"] = self.radii[c - 1]
            if self._diag_steps:
                out[f"positive_share_l{c}"] = float(shares[0, j])
                out[f"queue_share_l{c}"] = float(shares[1, j])
        return out

    # ------------------------------------------------------------------ loss
    def _predictions(self, z: torch.Tensor) -> list[torch.Tensor]:
        outs = [p(z) for p in self.predictors]
        return outs * self.num_criteria if len(outs) == 1 else outs

    def _relative_term(self, qs: list[torch.Tensor], key: torch.Tensor,
                       indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        support = self.queue.features()
        if self._clustered and len(support):
            z_prime, rows = nearest_in_queue(key, self.queue)
            cols = self.level_labels[:, self.criteria_columns]
            positive = cols[indices] == cols[self.queue.sample_indices()[rows]]
        else:  # warm-up: Eq. 1 with the image's own key as the positive
            z_prime = key
            positive = torch.ones(key.shape[0], self.num_criteria, dtype=torch.bool, device=key.device)
        loss = relative_contrastive_loss(qs, z_prime, support, positive, tau=self.temperature)
        return loss, positive

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        z1, z2 = self.project(v1), self.project(v2)
        k1, k2 = self.keys(v1), self.keys(v2)
        indices = indices.to(self.level_labels.device)
        loss_a, pos_a = self._relative_term(self._predictions(z1), k2, indices)
        loss_b, pos_b = self._relative_term(self._predictions(z2), k1, indices)
        loss = (loss_a + loss_b) / 2
        self._accumulate([pos_a, pos_b], indices)
        rate = (pos_a.float().mean() + pos_b.float().mean()) * 50.0
        self.queue.enqueue(k1, indices)
        if self.criteria == "online" and self.hierarchy is not None:
            all_indices = gather_no_grad(indices)
            all_keys = gather_no_grad(nn.functional.normalize(k1.float(), dim=1))
            self.hierarchy.update(all_indices, all_keys)
            self.level_labels.copy_(self.hierarchy.labels)
            self._clusters_top = self.hierarchy.num_clusters[-1]
        return StepOutput(loss=loss, metrics={"positive_rate": rate,
                                              "clusters_top": torch.tensor(float(self._clusters_top))})

