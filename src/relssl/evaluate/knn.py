"""k-nearest-neighbour classification on frozen features, with cosine similarity.

The default is the weighted vote of Wu et al. 2018 ("Unsupervised feature learning via non-parametric
instance discrimination", eq. 9): each of the k most similar train samples votes for its class with
weight ``exp(s / tau)``, ``s`` the cosine similarity and ``tau = 0.07``; the class with the largest sum
wins. ``weighting="majority"`` gives every neighbour one vote instead. Ties go to the lowest class index.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from relssl.evaluate.retrieval import cosine_topk

__all__ = ["knn_accuracy", "knn_predict"]

Weighting = Literal["exp", "majority"]


def _labels(name: str, labels: Tensor, n: int) -> Tensor:
    labels = torch.as_tensor(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class indices, got {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} has negative labels (-1 marks unlabelled samples); kNN needs a labelled split")
    return labels.long()


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    weighting: Weighting = "exp",
    num_classes: int | None = None,
    chunk: int = 4096,
) -> Tensor:
    """Predicted class of each test row, ``(N_test,)`` int64, by a vote of its ``k`` cosine nearest train rows.

    ``temperature`` is only used by ``weighting="exp"``; ``num_classes`` defaults to the largest train
    label plus one. Runs on ``test_features``' device; ``chunk`` bounds memory as in :func:`cosine_topk`.
    """
    if weighting not in ("exp", "majority"):
        raise ValueError(f"weighting must be 'exp' or 'majority', got {weighting!r}")
    if weighting == "exp" and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float))
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    train_labels = _labels("train_labels", train_labels, torch.as_tensor(train_features).shape[0])
    largest = int(train_labels.max()) if train_labels.numel() else -1
    if num_classes is None:
        num_classes = largest + 1
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= largest:
        raise ValueError(f"num_classes must be an integer above the largest train label ({largest}), got {num_classes!r}")

    sims, idx = cosine_topk(test_features, train_features, k, chunk=chunk)
    neighbour_labels = train_labels.to(idx.device)[idx]  # (N_test, k)
    weights = torch.ones_like(sims) if weighting == "majority" else (sims / temperature).exp()
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64, device=sims.device)
    votes.scatter_add_(1, neighbour_labels, weights.double())
    return votes.argmax(dim=1)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    weighting: Weighting = "exp",
    num_classes: int | None = None,
    chunk: int = 4096,
) -> float:
    """kNN top-1 accuracy on the test rows, in percent (see :func:`knn_predict` for the vote)."""
    test_labels = _labels("test_labels", test_labels, torch.as_tensor(test_features).shape[0])
    predictions = knn_predict(train_features, train_labels, test_features, k=k, temperature=temperature,
                              weighting=weighting, num_classes=num_classes, chunk=chunk)
    return 100.0 * (predictions.cpu() == test_labels.cpu()).double().mean().item()
