"""Classification metrics shared by the evaluation protocols."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["topk_accuracy", "topk_correct"]


def _check_ks(ks: Sequence[int], num_classes: int) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must name at least one k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
        if k > num_classes:
            raise ValueError(f"top-{k} accuracy needs at least {k} classes, the logits have {num_classes}")
    return ks


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of samples whose label is among the k highest logits, for each k in ``ks``.

    Counts (not percentages) so that chunked evaluation over a large split can add them up.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, C), got {tuple(logits.shape)}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    ks = _check_ks(ks, logits.shape[1])
    top = logits.topk(max(ks), dim=1).indices  # (N, max k), best first
    hit = top == labels.to(top.device, torch.long).unsqueeze(1)
    return {k: int(hit[:, :k].any(dim=1).sum().item()) for k in ks}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each k in ``ks``: the label is among the k highest logits.

    Ties between equal logits are broken by ``torch.topk``; ``k`` larger than the number of classes
    is an error rather than a silent 100%.
    """
    if logits.ndim >= 1 and logits.shape[0] == 0:
        raise ValueError("topk_accuracy needs at least one sample, got an empty batch")
    correct = topk_correct(logits, labels, ks)
    n = logits.shape[0]
    return {k: 100.0 * c / n for k, c in correct.items()}
