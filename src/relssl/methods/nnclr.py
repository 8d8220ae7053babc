"""NNCLR (Dwibedi et al., 2021): the nearest neighbour of one view in a support queue is the other view's positive."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from relssl.distributed import gather_no_grad, rank
from relssl.losses.contrastive import cross_view_nce, info_nce
from relssl.methods.base import StepOutput
from relssl.methods.queue import FeatureQueue
from relssl.methods.registry import register_method
from relssl.methods.siamese import HeadsConfig, TwoViewMethod


class NNCLRConfig(HeadsConfig):
    """NNCLR baseline (Dwibedi et al., 2021): tau 0.1, support queue 98,304, in-batch negatives, no momentum."""

    temperature: float = Field(default=0.1, gt=0)
    queue_size: int = Field(default=98304, ge=1)
    momentum: float | None = Field(default=None, ge=0, lt=1)  # set: an EMA key encoder (RCL paper's form)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    negatives: Literal["batch", "queue"] = "batch"


@torch.no_grad()
def nearest_in_queue(z: torch.Tensor, queue: FeatureQueue) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest neighbour of every row of `z` among the queue's rows: (features (B, d), queue rows (B,)).

    An empty queue returns `z` itself (normalised) and rows of -1, so the first step is plain
    instance discrimination.
    """
    zn = nn.functional.normalize(z.detach().float(), dim=1)
    bank = queue.features()
    if len(bank) == 0:
        return zn, torch.full((z.shape[0],), -1, dtype=torch.long, device=z.device)
    rows = (zn @ bank.t()).argmax(dim=1)
    return bank[rows], rows


@register_method("nnclr", config=NNCLRConfig)
class NNCLR(TwoViewMethod):
    """L = (ctr(p2, NN(z1)) + ctr(p1, NN(z2))) / 2 with NN from a queue of embeddings (default 98,304 = 1.5 * 2^16).

    Paper defaults: no momentum encoder, in-batch negatives (`negatives="batch"`), tau = 0.1, the
    queue filled with view 1's online embeddings. `momentum` adds an EMA key encoder (the queue
    then holds keys and the neighbours are found for keys) and `negatives="queue"` contrasts
    against the queue instead of the batch: together they give the form RCL reduces to with one
    criterion (Tang et al. 2022, §5.2), used for the RCL-vs-NNCLR cost comparison.
    """

    metric_names = ("nn_same_image",)

    def __init__(self, backbone: nn.Module, config: NNCLRConfig | None = None) -> None:
        config = config if config is not None else NNCLRConfig()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, config.predictor_hidden,
                         momentum=config.momentum, momentum_schedule=config.momentum_schedule)
        self.temperature = config.temperature
        self.negatives = config.negatives
        self.queue = FeatureQueue(config.queue_size, config.projector_dim)

    def _ctr(self, p: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        if self.negatives == "queue":
            return info_nce(p, positives, self.queue.features(), temperature=self.temperature)
        return cross_view_nce(p, gather_no_grad(positives), self.temperature, offset=rank() * p.shape[0])

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        v1, v2 = views.chunk(2)
        z1, z2 = self.project(v1), self.project(v2)
        p1, p2 = self.predict(z1), self.predict(z2)
        if self.target is not None:
            k1, k2 = self.keys(v1), self.keys(v2)
        else:
            k1, k2 = z1.detach(), z2.detach()
        nn1, rows1 = nearest_in_queue(k1, self.queue)
        nn2, _ = nearest_in_queue(k2, self.queue)
        loss = (self._ctr(p2, nn1) + self._ctr(p1, nn2)) / 2
        with torch.no_grad():  # does the neighbour come from the same image (an earlier epoch's entry)?
            same = self.queue.sample_indices()[rows1.clamp(min=0)] == indices if len(self.queue) else rows1 < 0
            nn_same_image = same.float().mean() * 100.0
        self.queue.enqueue(k1, indices)
        return StepOutput(loss=loss, metrics={"nn_same_image": nn_same_image})
