"""Config sections of the self-supervised methods (one per method), used by `relssl.config.RunConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from relssl.config.section import Section as _Section
from relssl.losses import AGGREGATIONS


class RelationalConfig(_Section):
    """Relational Reasoning settings; paper defaults except K (the paper uses 32)."""

    k: int = Field(default=32, ge=2)
    aggregation: str = "cat"
    gamma: float = Field(default=2.0, ge=0.0)
    head: Literal["mlp", "dot", "encoder"] = "mlp"  # ablations: no head (dot product), encoder + dot product
    head_hidden: int = Field(default=256, ge=1)
    encoder_dim: int = Field(default=64, ge=1)  # output size of the `encoder` head ablation
    # Semi-supervised option: share of training images whose labels are used to form
    # extra positives (same class). 0 is the unsupervised method of the paper.
    labelled_fraction: float = Field(default=0.0, ge=0.0, le=1.0)

    @field_validator("aggregation")
    @classmethod
    def _known_aggregation(cls, value: str) -> str:
        if value not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {value!r}; choose from {', '.join(AGGREGATIONS)}")
        return value


class SimCLRConfig(_Section):
    """SimCLR baseline (Chen et al., 2020) settings."""

    temperature: float = Field(default=0.5, gt=0)
    form: Literal["standard", "mean_log"] = "standard"
    projector_hidden: int = Field(default=256, ge=1)
    projector_dim: int = Field(default=64, ge=1)


class DeepClusterConfig(_Section):
    """DeepCluster baseline (Caron et al., 2018) settings."""

    num_clusters: int = Field(default=100, ge=2)
    pca_dim: int | None = Field(default=None, ge=1)  # None: min(256, feature_dim)
    kmeans_iters: int = Field(default=20, ge=1)


class DIMConfig(_Section):
    """Deep InfoMax baseline (Hjelm et al., 2019) settings: DIM(L) with the prior term."""

    local_weight: float = Field(default=1.0, ge=0)  # beta
    prior_weight: float = Field(default=0.1, ge=0)  # gamma
    embed_dim: int = Field(default=64, ge=1)


class _HeadsConfig(_Section):
    """Projector / predictor widths shared by the two-view methods (paper 2: [2048, 2048, 256] and [4096, 256])."""

    projector_hidden: list[int] = Field(default_factory=lambda: [2048, 2048])
    projector_dim: int = Field(default=256, ge=1)
    predictor_hidden: int = Field(default=4096, ge=1)

    @field_validator("projector_hidden")
    @classmethod
    def _positive_widths(cls, widths: list[int]) -> list[int]:
        if any(w < 1 for w in widths):
            raise ValueError(f"every hidden width must be >= 1; got {widths}")
        return widths


class _MomentumConfig(_HeadsConfig):
    """EMA key/target encoder: base coefficient and schedule ('cosine' rises to 1, BYOL; 'constant', MoCo v2)."""

    momentum: float = Field(default=0.99, ge=0, lt=1)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"


class MoCoV2Config(_Section):
    """MoCo v2 baseline (Chen et al., 2020): MLP [2048] -> 128 (no predictor), tau 0.2, 65,536 negatives, m 0.999."""

    projector_hidden: list[int] = Field(default_factory=lambda: [2048])
    projector_dim: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.2, gt=0)
    queue_size: int = Field(default=65536, ge=1)
    momentum: float = Field(default=0.999, ge=0, lt=1)
    momentum_schedule: Literal["cosine", "constant"] = "constant"
    symmetric: bool = False


class MoCoV3Config(_MomentumConfig):
    """MoCo v3 baseline (Chen, Xie & He, 2021); tau 0.2 (the MoCo v3 paper uses 1.0 for its ResNet-50)."""

    temperature: float = Field(default=0.2, gt=0)


class BYOLConfig(_MomentumConfig):
    """BYOL baseline (Grill et al., 2020): projector [4096] -> 256, predictor [4096], m 0.996 -> 1."""

    projector_hidden: list[int] = Field(default_factory=lambda: [4096])
    momentum: float = Field(default=0.996, ge=0, lt=1)


class SimSiamConfig(_HeadsConfig):
    """SimSiam baseline (Chen & He, 2021): projector [2048, 2048] -> 2048, bottleneck predictor 512."""

    projector_dim: int = Field(default=2048, ge=1)
    predictor_hidden: int = Field(default=512, ge=1)


class NNCLRConfig(_HeadsConfig):
    """NNCLR baseline (Dwibedi et al., 2021): tau 0.1, support queue 98,304, in-batch negatives, no momentum."""

    temperature: float = Field(default=0.1, gt=0)
    queue_size: int = Field(default=98304, ge=1)
    momentum: float | None = Field(default=None, ge=0, lt=1)  # set: an EMA key encoder (RCL paper's form)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    negatives: Literal["batch", "queue"] = "batch"


class RCLConfig(_MomentumConfig):
    """RCL (Tang et al., 2022) settings; paper defaults unless noted (docs/methods/rcl.md lists every choice)."""

    temperature: float = Field(default=0.1, gt=0)  # tau of Eq. 3
    queue_size: int = Field(default=98304, ge=1)  # support queue, 1.5 * 2^16
    warmup_epochs: int = Field(default=10, ge=0)  # epochs of the plain contrastive loss before clustering
    criteria: Literal["online", "kmeans", "dbscan"] = "online"  # online hierarchy or the offline ablations
    radii: list[float] = Field(default_factory=lambda: [0.6, 0.7, 0.8])  # DBSCAN eps per level, finest first
    min_samples: int = Field(default=4, ge=1)
    kmeans_clusters: list[int] = Field(default_factory=list)  # clusters per level for criteria=kmeans, most first
    num_predictors: int | None = Field(default=None, ge=1)  # None: one per criterion (H); 1: shared
    instance_criterion: bool = False  # also use the instance level (column 0) as a criterion
    hierarchy_options: dict[str, Any] = {}  # further relssl.cluster.OnlineHierarchy options, e.g. merge_threshold

    @model_validator(mode="after")
    def _levels_fit(self) -> "RCLConfig":
        r = self.radii
        if not r or any(not 0 < x <= 2 for x in r) or any(b <= a for a, b in zip(r, r[1:])):
            raise ValueError(f"rcl.radii must be in (0, 2] (unit-sphere distances), strictly ascending "
                             f"(finest level first); got {r}")
        levels = len(r)
        if self.criteria == "kmeans":
            k = self.kmeans_clusters
            if not k or any(c < 2 for c in k) or any(b >= a for a, b in zip(k, k[1:])):
                raise ValueError(f"rcl.kmeans_clusters must list >= 2 clusters per level, strictly decreasing; got {k}")
            levels = len(k)
        h = levels + int(self.instance_criterion)
        if self.num_predictors not in (None, 1, h):
            raise ValueError(f"rcl.num_predictors must be 1 (shared) or H={h} (one per criterion); got {self.num_predictors}")
        return self
