"""Relational Reasoning (Patacchiola & Storkey, NeurIPS 2020): a relation head scores pairs."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from relssl.config import Section
from relssl.data.batch_indices import LabelledBatches
from relssl.distributed import gather_no_grad, gather_with_grad, world_size
from relssl.errors import ConfigError
from relssl.evaluate.subset import balanced_subset
from relssl.losses import AGGREGATIONS, focal_bce, relational_pairs
from relssl.losses.relational_semi import semi_supervised_pairs, weighted_focal_bce
from relssl.methods.base import Method, StepOutput
from relssl.methods.registry import register_method
from relssl.models import ProjectionMLP, RelationHead, feature_dim


class RelationalConfig(Section):
    """Relational Reasoning settings; paper defaults except K (the paper uses 32)."""

    k: int = Field(default=32, ge=2)
    aggregation: str = "cat"
    gamma: float = Field(default=2.0, ge=0.0)
    head: Literal["mlp", "dot", "encoder"] = "mlp"  # ablations: no head (dot product), encoder + dot product
    head_hidden: int = Field(default=256, ge=1)
    encoder_dim: int = Field(default=64, ge=1)  # output size of the `encoder` head ablation
    # Semi-supervised option: share of training images (class-balanced, seeded by the run's seed)
    # whose labels are used to form extra positives (same class). 0 is the paper's unsupervised method.
    labelled_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    # How labels make positives: "explicit" pairs every labelled image's views with the views of the
    # batch's other labelled images of its class (docs/methods/relational.md); "flip" only turns a
    # scheduled negative whose two images share a labelled class into a positive (the rule before issue 12).
    label_positives: Literal["explicit", "flip"] = "explicit"
    # How explicit label pairs enter the loss (docs/methods/relational.md). "label_term" (default;
    # with the composed batches below, ahead at every share in docs/RESULTS.md) keeps the unsupervised pairs as without labels and
    # adds a separate term over every ordered pair of labelled images (same class positive, other
    # class negative) with share `label_weight` of the loss. The others pool label positives with
    # the augmentation positives, positives and negatives weighing alike in total: "negatives" adds
    # one negative per label positive; "weight" keeps one negative per anchor and down-weights each
    # positive; "dense" gives each labelled anchor every image not of its class as a negative;
    # "dense_per_anchor" the same negatives, each anchor's sharing one anchor's weight. Moot with
    # "flip", which stores "weight".
    label_balance: Literal["weight", "negatives", "dense", "dense_per_anchor", "label_term"] = "label_term"
    # label_term only: the label term's share of the loss (the unsupervised pairs keep the rest).
    label_weight: float = Field(default=0.5, gt=0.0, lt=1.0)
    # With few labels a random batch holds few labelled images: with labels in use (and some images
    # unlabelled), round(share * batch_size) slots of every batch come from the labelled set
    # (labelled images repeat within an epoch). 0: plain random batches (docs/methods/relational.md).
    labelled_batch_share: float = Field(default=0.75, ge=0.0, le=1.0)
    # The other slots: "all" fills them as a random batch would (labelled with the data's labelled
    # share), so more labels still mean more labelled images per batch; "unlabelled" with unlabelled
    # images only, and only while the labelled share is below labelled_batch_share.
    labelled_batch_rest: Literal["all", "unlabelled"] = "all"
    # With several processes: "local" builds pairs among each rank's own images (as the reference
    # code would per GPU; pairs grow as K^2 * M / ranks); "global" gathers every rank's features and
    # builds the pairs of the whole batch on every rank, the same as one process with the global batch.
    pairs: Literal["local", "global"] = "local"

    @field_validator("aggregation")
    @classmethod
    def _known_aggregation(cls, value: str) -> str:
        if value not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {value!r}; choose from {', '.join(AGGREGATIONS)}")
        return value

    @model_validator(mode="after")
    def _head_fits_aggregation(self) -> RelationalConfig:
        if self.head != "mlp" and self.aggregation != "cat":
            raise ValueError("relational.head: 'dot' and 'encoder' score the two members of a pair and need "
                             "aggregation 'cat'")
        return self

    @model_validator(mode="before")
    @classmethod
    def _flip_stores_weight(cls, data: Any) -> Any:
        # the balance is moot for flip: "weight" stands for it, so a saved flip run's config reads back
        if isinstance(data, dict) and data.get("label_positives") == "flip" and "label_balance" not in data:
            data = {**data, "label_balance": "weight"}
        return data

    @model_validator(mode="after")
    def _balance_needs_explicit(self) -> RelationalConfig:
        if self.label_balance != "weight" and self.label_positives != "explicit":
            raise ValueError(f"relational.label_balance: {self.label_balance!r} applies to label_positives "
                             "'explicit' only")
        label_weight_default = type(self).model_fields["label_weight"].default  # saved configs hold it
        if self.label_weight != label_weight_default and self.label_balance != "label_term":
            raise ValueError("relational.label_weight applies to label_balance 'label_term' only; got "
                             f"label_balance {self.label_balance!r}")
        return self


@register_method("relational", config=RelationalConfig)
class RelationalReasoning(Method):
    """Backbone + relation head trained with focal BCE on intra/inter-reasoning pairs (Eq. 1).

    The backbone embeds K views of M images; `relational_pairs` builds M*K(K-1) aggregated
    pairs (half positive) and the head's logits are scored with the focal loss of Eq. 7-8.
    With labels (`labelled_fraction` > 0) `semi_supervised_pairs` also pairs labelled images (by
    default in a label term of its own: same class positive, other class negative) and the
    trainer fills `labelled_batch_share` of every batch from the labelled set while labels are few.
    Head ablations (paper Appendix B.8): `mlp` is the relation module; `dot` removes it and
    scores a pair by the dot product of its two representations; `encoder` first maps each
    representation through an MLP encoder (as SimCLR's projector) and then takes the dot product.
    """

    metric_names = ("pair_acc",)

    def __init__(self, backbone: nn.Module, config: RelationalConfig | None = None) -> None:
        config = config if config is not None else RelationalConfig()
        super().__init__(backbone, num_views=config.k)
        dim = feature_dim(backbone)
        self.config = config
        self.aggregation = config.aggregation
        self.gamma = config.gamma
        self.head_kind = config.head
        self.use_labels = config.labelled_fraction > 0
        self.explicit_positives = config.label_positives == "explicit"
        self.global_pairs = config.pairs == "global"
        self.labelled_batches = (LabelledBatches(config.labelled_batch_share, config.labelled_batch_rest)
                                 if self.use_labels and config.labelled_batch_share > 0 else None)
        if config.head == "mlp":
            self.head = RelationHead(2 * dim if config.aggregation == "cat" else dim, hidden=config.head_hidden)
        elif config.head == "encoder":
            self.encoder = ProjectionMLP(dim, [config.head_hidden], config.encoder_dim)

    def training_labels(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """With `labelled_fraction` > 0: a seeded, class-balanced share of the labels (the rest -1), else none."""
        fraction = self.config.labelled_fraction
        labels = np.asarray(labels, dtype=np.int64)
        if fraction == 0:
            return labels
        if (labels < 0).any():
            raise ConfigError("relational.labelled_fraction needs a fully labelled pretraining split "
                             "(data.train_split); this one has unlabelled images")
        out = np.full_like(labels, -1)
        keep = balanced_subset(labels, fraction, seed)
        out[keep] = labels[keep]
        return out

    def _global_batch(self, z: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ranks' features, view-major over the global batch (gradients reach each rank's rows), and labels.

        Every rank then scores the whole batch's pairs; DDP's average of the identical losses, with
        the gather's summed gradients, gives exactly the gradient of one process on the global batch.
        """
        k, d = self.num_views, z.shape[1]
        gathered = gather_with_grad(z).view(world_size(), k, -1, d)  # rank-major: rank, view, image
        return gathered.transpose(0, 1).reshape(-1, d), gather_no_grad(labels)

    def pair_logits(self, z: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Relation scores (logits) and targets of every pair built from the K*M features `z`."""
        logits, targets, _ = self.weighted_pair_logits(z, labels)
        return logits, targets

    def weighted_pair_logits(self, z: torch.Tensor, labels: torch.Tensor | None) -> tuple[
            torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits, targets and loss weights of every pair (weights None: a plain mean, the unsupervised case)."""
        if self.head_kind == "encoder":
            z = self.encoder(z)
        weights = None
        if labels is not None and self.explicit_positives:
            pairs, targets, weights = semi_supervised_pairs(z, self.num_views, labels, self.aggregation,
                                                            self.config.label_balance, self.config.label_weight)
        else:
            pairs, targets = relational_pairs(z, self.num_views, self.aggregation, labels=labels)
        if self.head_kind == "mlp":
            return self.head(pairs), targets, weights
        left, right = pairs.chunk(2, dim=1)
        return (left * right).sum(dim=1), targets, weights

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z = self.backbone(views)
        if self.global_pairs and world_size() > 1:
            z, labels = self._global_batch(z, labels)
        logits, targets, weights = self.weighted_pair_logits(z, labels if self.use_labels else None)
        logits = logits.float()
        if weights is None:
            loss = focal_bce(logits, targets, gamma=self.gamma)
        else:
            loss = weighted_focal_bce(logits, targets, weights, gamma=self.gamma)
        with torch.no_grad():
            pair_acc = ((logits > 0).to(targets.dtype) == targets).float().mean() * 100.0
        return StepOutput(loss=loss, metrics={"pair_acc": pair_acc})
