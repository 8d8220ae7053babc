"""MoCo v2 (Chen et al., 2020): momentum key encoder, a queue of negatives, InfoNCE."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from relssl.config import Section
from relssl.distributed import gather_no_grad, rank_slice, world_size
from relssl.errors import ConfigError
from relssl.losses.contrastive import info_nce
from relssl.methods.base import StepOutput
from relssl.methods.queue import FeatureQueue
from relssl.methods.registry import register_method
from relssl.methods.siamese import TwoViewMethod


class MoCoV2Config(Section):
    """MoCo v2 baseline (Chen et al., 2020): MLP [2048] -> 128 (no predictor), tau 0.2, 65,536 negatives, m 0.999."""

    projector_hidden: list[int] = Field(default_factory=lambda: [2048])
    projector_dim: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.2, gt=0)
    queue_size: int = Field(default=65536, ge=1)
    momentum: float = Field(default=0.999, ge=0, lt=1)
    momentum_schedule: Literal["cosine", "constant"] = "constant"
    symmetric: bool = False
    # MoCo's shuffling BN: the key encoder sees the global batch shuffled across processes, so its
    # BatchNorm statistics do not leak which key belongs to which query. Needs 2 or more processes.
    shuffle_bn: bool = False


@register_method("mocov2", config=MoCoV2Config)

class MoCoV2(TwoViewMethod):
    """Query = online backbone + MLP projector; key = its EMA copy; negatives = the last `queue_size` keys.

    Asymmetric as in the MoCo v2 paper; `symmetric=True` adds the swapped term (the mean of the two)
    and enqueues the keys of both views, 2M per step, view 1's first (MoCo's CIFAR-10 demo). The
    projector is fc-BN-ReLU-fc (MoCo v2's MLP has no BN; ours keeps the hidden BN of our shared
    projector). Single-process runs do not shuffle BN over devices; see docs/methods/mocov2.md.
    The queue starts empty, so the first step has no negatives.
    """

    metric_names = ("pos_acc",)

    def __init__(self, backbone: nn.Module, config: MoCoV2Config | None = None) -> None:
        config = config if config is not None else MoCoV2Config()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, predictor_hidden=None,
                         momentum=config.momentum, momentum_schedule=config.momentum_schedule,
                         projector_last_bn=False)
        if config.shuffle_bn and world_size() < 2:
            raise ConfigError("mocov2.shuffle_bn shuffles the batch across processes for the key encoder's "
                              "BatchNorm; it needs 2 or more (torchrun --nproc_per_node N), or drop it")
        self.temperature = config.temperature
        self.symmetric = config.symmetric
        self.shuffle_bn = config.shuffle_bn
        self.queue = FeatureQueue(config.queue_size, config.projector_dim)

    @torch.no_grad()
    def _shuffled_keys(self, views: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Keys of this rank's views, computed on a slice of the global batch shuffled across ranks.

        The permutation is a hash of the batch's dataset indices: the same on every rank (no
        broadcast) and the same again when a run resumes. The keys come back in the views' order.
        """
        all_views, all_indices = gather_no_grad(views), gather_no_grad(indices)
        order = torch.argsort((all_indices * 2654435761) % 4294967296)  # Knuth's multiplicative hash
        mine = rank_slice(views.shape[0])
        shuffled = gather_no_grad(self.keys(all_views[order[mine]]))
        keys = torch.empty_like(shuffled)
        keys[order] = shuffled
        return keys[mine]

    def _keys(self, views: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self._shuffled_keys(views, indices) if self.shuffle_bn else self.keys(views)

    def _loss(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        negatives = self.queue.features()
        loss = info_nce(q, k, negatives, temperature=self.temperature)
        with torch.no_grad():
            qn, kn = nn.functional.normalize(q.float(), dim=1), nn.functional.normalize(k.float(), dim=1)
            pos = (qn * kn).sum(1)
            best_neg = (qn @ negatives.t()).amax(1) if len(negatives) else torch.full_like(pos, -2.0)
            acc = (pos > best_neg).float().mean() * 100.0
        return loss, acc

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        q1 = self.project(v1)
        k2 = self._keys(v2, indices)
        loss, acc = self._loss(q1, k2)
        if self.symmetric:
            k1 = self._keys(v1, indices)
            loss_b, acc_b = self._loss(self.project(v2), k1)
            loss, acc = (loss + loss_b) / 2, (acc + acc_b) / 2
            self.queue.enqueue(k1, indices)  # both views' keys, view 1's first (MoCo's symmetric demo)
        self.queue.enqueue(k2, indices)
        return StepOutput(loss=loss, metrics={"pos_acc": acc})
