"""NNCLR (Dwibedi et al., 2021): the nearest neighbour of one view in a support queue is the other view's positive."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from relssl.distributed import gather_no_grad, gather_with_grad, rank
from relssl.losses.contrastive import cross_view_nce, info_nce
from relssl.methods.base import StepOutput
from relssl.methods.queue import FeatureQueue
from relssl.methods.registry import register_method
from relssl.methods.siamese import HeadsConfig, TwoViewMethod

SOFTMAX_OVER = ("predictions", "neighbours", "both")


class NNCLRConfig(HeadsConfig):
    """NNCLR baseline (Dwibedi et al., 2021): tau 0.1, support queue 98,304, in-batch negatives, no momentum.

    `softmax_over`: what each loss term normalises over. `predictions` (default) is the paper's
    Eq. 2: the anchor is the neighbour NN(z_i), the softmax runs over the other view's predictions
    of the batch. `neighbours` anchors the prediction and normalises over the batch's neighbours
    (relssl's form before issue 12); `both` is the mean of the two. `negatives: queue` (the RCL
    paper's form) anchors the prediction against its neighbour and the queue, so it needs
    `neighbours`, which is also the default when `negatives: queue` is set and `softmax_over` is not.
    """

    temperature: float = Field(default=0.1, gt=0)
    queue_size: int = Field(default=98304, ge=1)
    momentum: float | None = Field(default=None, ge=0, lt=1)  # set: an EMA key encoder (RCL paper's form)
    momentum_schedule: Literal["cosine", "constant"] = "cosine"
    negatives: Literal["batch", "queue"] = "batch"
    softmax_over: Literal["predictions", "neighbours", "both"] = "predictions"

    @model_validator(mode="before")
    @classmethod
    def _queue_defaults_to_neighbours(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("negatives") == "queue" and "softmax_over" not in data:
            return {**data, "softmax_over": "neighbours"}
        return data

    @model_validator(mode="after")
    def _queue_needs_neighbours(self) -> NNCLRConfig:
        if self.negatives == "queue" and self.softmax_over != "neighbours":
            raise ValueError("nnclr.softmax_over must be 'neighbours' with nnclr.negatives: queue (the queue holds "
                             "embeddings, not predictions, so only a prediction can be scored against it)")
        return self


def nnclr_loss(p1: torch.Tensor, p2: torch.Tensor, nn1: torch.Tensor, nn2: torch.Tensor,
               temperature: float = 0.1, softmax_over: str = "predictions") -> torch.Tensor:
    """NNCLR's in-batch loss, symmetrised over the views: (L(NN(z1), p2) + L(NN(z2), p1)) / 2.

    For `predictions` (Eq. 2 of Dwibedi et al.) L_i = -log softmax_k(NN(z_i) . p_k^+ / t)[i], k over
    the other view's predictions of the whole batch (gathered over ranks with their gradient);
    `neighbours` is L_i = -log softmax_k(p_i^+ . NN(z_k) / t)[i] (neighbours gathered without
    gradient); `both` averages the two. Vectors are L2-normalised; the mean runs over this rank's rows.
    """
    if softmax_over not in SOFTMAX_OVER:
        raise ValueError(f"softmax_over must be one of {', '.join(SOFTMAX_OVER)}; got {softmax_over!r}")
    offset = rank() * p1.shape[0]

    def term(p: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        losses = []
        if softmax_over != "neighbours":  # anchor NN(z_i), candidates the other view's predictions
            losses.append(cross_view_nce(neighbours, gather_with_grad(p), temperature, offset=offset))
        if softmax_over != "predictions":  # anchor p_i^+, candidates the batch's neighbours
            losses.append(cross_view_nce(p, gather_no_grad(neighbours), temperature, offset=offset))
        return torch.stack(losses).mean()

    return (term(p2, nn1) + term(p1, nn2)) / 2


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
    """L = (ctr(NN(z1), p2) + ctr(NN(z2), p1)) / 2 with NN from a queue of embeddings (default 98,304 = 1.5 * 2^16).

    Paper defaults: Eq. 2 (`softmax_over="predictions"`, see `nnclr_loss`), no momentum encoder,
    in-batch negatives, tau = 0.1, the queue filled with view 1's online embeddings. `momentum`
    adds an EMA key encoder (the queue then holds keys and the neighbours are found for keys) and
    `negatives="queue"` scores each prediction against its neighbour and the queue rows: together
    they give the form RCL reduces to with one criterion (Tang et al. 2022, §5.2), used for the
    RCL-vs-NNCLR cost comparison.
    """

    metric_names = ("nn_same_image",)

    def __init__(self, backbone: nn.Module, config: NNCLRConfig | None = None) -> None:
        config = config if config is not None else NNCLRConfig()
        super().__init__(backbone, config.projector_hidden, config.projector_dim, config.predictor_hidden,
                         momentum=config.momentum, momentum_schedule=config.momentum_schedule)
        self.temperature = config.temperature
        self.negatives = config.negatives
        self.softmax_over = config.softmax_over
        self.queue = FeatureQueue(config.queue_size, config.projector_dim)

    def _loss(self, p1: torch.Tensor, p2: torch.Tensor, nn1: torch.Tensor, nn2: torch.Tensor) -> torch.Tensor:
        if self.negatives == "queue":  # the RCL paper's form: each prediction against its neighbour and the queue
            bank, t = self.queue.features(), self.temperature
            return (info_nce(p2, nn1, bank, temperature=t) + info_nce(p1, nn2, bank, temperature=t)) / 2
        return nnclr_loss(p1, p2, nn1, nn2, self.temperature, self.softmax_over)

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
        loss = self._loss(p1, p2, nn1, nn2)
        with torch.no_grad():  # does the neighbour come from the same image (an earlier epoch's entry)?
            same = self.queue.sample_indices()[rows1.clamp(min=0)] == indices if len(self.queue) else rows1 < 0
            nn_same_image = same.float().mean() * 100.0
        self.queue.enqueue(k1, indices)
        return StepOutput(loss=loss, metrics={"nn_same_image": nn_same_image})
