"""Relational Reasoning pairs and focal binary cross-entropy (Patacchiola & Storkey, 2020).

The pair construction follows Eq. 3-4 of the paper and the negative schedule of its
reference code; the loss is Eq. 7-8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AGGREGATIONS = ("cat", "sum", "mean", "max")


def check_aggregation(aggregation: str) -> str:
    """Return `aggregation` if it is one of AGGREGATIONS, else raise a ValueError naming it."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"aggregation must be one of {', '.join(AGGREGATIONS)}; got {aggregation!r}"
        )
    return aggregation


def aggregate(a: torch.Tensor, b: torch.Tensor, aggregation: str = "cat") -> torch.Tensor:
    """Join two (P, d) feature sets into relation-head inputs, Eq. 5 of the paper.

    `cat` gives (P, 2d); `sum`, `mean` and `max` are element-wise and give (P, d).
    """
    check_aggregation(aggregation)
    if aggregation == "cat":
        return torch.cat((a, b), dim=1)
    if aggregation == "sum":
        return a + b
    if aggregation == "mean":
        return (a + b) * 0.5
    return torch.maximum(a, b)


def negative_shifts(k: int, m: int) -> list[int]:
    """Shift s_c = (c mod (M-1)) + 1 used for the c-th augmentation pair's negatives.

    This is the reference code's schedule: a counter starting at 1 that wraps to 1 after
    M-1, so no shift is ever 0 (a 0 shift would pair an image with itself).
    """
    n_pairs = k * (k - 1) // 2
    return [(c % (m - 1)) + 1 for c in range(n_pairs)]


def _pair_members(z: torch.Tensor, k: int, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left and right members of every pair, and which pairs are positive.

    For augmentation pair c = (i, j), i < j in row-major order, rows [2cM, 2cM + M) hold the
    positives (view i of image n, view j of image n) and rows [2cM + M, 2cM + 2M) the negatives
    (view i of image n, view j of image (n - s_c) mod M).

    Built from broadcast views, a boolean mask and one permutation gather: every gather reads
    each source row at most once, so the backward pass has no duplicate-index accumulation,
    whose thread-order float sums make `z[index]` with repeated indices non-deterministic on CPU.
    """
    d = z.shape[1]
    zv = z.view(k, m, d)
    upper = torch.ones(k, k, dtype=torch.bool, device=z.device).triu(1)
    left = zv[:, None].expand(k, k, m, d)[upper]  # (C, M, d): view i of pair c
    right = zv[None, :].expand(k, k, m, d)[upper]  # (C, M, d): view j of pair c
    n_pairs = left.shape[0]
    c = torch.arange(n_pairs, device=z.device)
    shifts = (c % (m - 1)) + 1
    n = torch.arange(m, device=z.device)
    rolled_rows = (c[:, None] * m + (n[None, :] - shifts[:, None]) % m).reshape(-1)  # a permutation
    right_neg = right.reshape(-1, d)[rolled_rows].view(n_pairs, m, d)
    left_all = torch.stack((left, left), dim=1).reshape(-1, d)
    right_all = torch.stack((right, right_neg), dim=1).reshape(-1, d)
    positive = torch.zeros(n_pairs, 2, m, dtype=torch.bool, device=z.device)
    positive[:, 0] = True
    return left_all, right_all, positive.reshape(-1)


def _pair_images(k: int, m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image index (0..M-1) of the left and right member of every pair, in `_pair_members` order."""
    n_pairs = k * (k - 1) // 2
    c = torch.arange(n_pairs, device=device)
    shifts = (c % (m - 1)) + 1
    n = torch.arange(m, device=device)
    left = n.expand(n_pairs, 2, m)
    right = torch.stack((n.expand(n_pairs, m), (n[None, :] - shifts[:, None]) % m), dim=1)
    return left.reshape(-1), right.reshape(-1)


def relational_pairs(
    z: torch.Tensor,
    k: int,
    aggregation: str = "cat",
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the M*K(K-1) aggregated pairs and their targets from K views of M images.

    `z` holds the K*M features in view-major order (all M images of view 0, then view 1, ...).
    For every augmentation pair (i, j) with i < j, taken in row-major order, the output holds
    M positives (z_i[n], z_j[n]) followed by M negatives (z_i[n], z_j[(n - s_c) mod M]) with
    the reference schedule s_c = (c mod (M-1)) + 1. Targets are float 1 / 0.

    Semi-supervised option: `labels` (M,) with -1 for unlabelled images; a "negative" whose two
    images are both labelled with the same class gets target 1 (the paper's §3.1: labelled
    images of the same category form positives too).
    """
    check_aggregation(aggregation)
    if z.dim() != 2:
        raise ValueError(f"z must be (K*M, d); got shape {tuple(z.shape)}")
    if k < 2:
        raise ValueError(f"k (number of views) must be at least 2; got {k}")
    if z.shape[0] % k != 0:
        raise ValueError(f"z has {z.shape[0]} rows, not a multiple of k={k}")
    m = z.shape[0] // k
    if m < 2:
        raise ValueError(f"need at least 2 images per batch to build negatives; got M={m}")
    left, right, positive = _pair_members(z, k, m)
    pairs = aggregate(left, right, aggregation)
    if labels is not None:
        if labels.shape != (m,):
            raise ValueError(f"labels must have shape (M,)=({m},); got {tuple(labels.shape)}")
        labels = labels.to(z.device)
        img_left, img_right = _pair_images(k, m, z.device)
        lab_left, lab_right = labels[img_left], labels[img_right]
        positive = positive | ((lab_left >= 0) & (lab_left == lab_right))
    return pairs, positive.to(z.dtype)


def focal_bce(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal binary cross-entropy of Eq. 7-8, mean over pairs.

    With y = sigmoid(logit): L = mean_i -w_i [t_i log y_i + (1 - t_i) log(1 - y_i)] and
    w_i = 1/2 [(1 - t_i) y_i + t_i (1 - y_i)]^gamma, the factor 1/2 as printed in the paper
    (so gamma = 0 gives plain BCE scaled by 1/2). The weight is part of the graph, as in
    the focal loss. Log-probabilities come from `logsigmoid`, which stays finite for large logits.
    """
    logits, targets = _checked_pairs(logits, targets, gamma)
    if gamma == 0:
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return 0.5 * bce.mean()
    return _focal_terms(logits, targets, gamma).mean()


def focal_bce_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-pair focal terms -w_i [t_i log y_i + (1 - t_i) log(1 - y_i)] of Eq. 7-8 (float32, flat)."""
    return _focal_terms(*_checked_pairs(logits, targets, gamma), gamma)


def _checked_pairs(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat float32 logits and targets of equal size; a ValueError for a negative gamma or a size mismatch."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0; got {gamma}")
    logits = logits.reshape(-1).float()
    targets = targets.reshape(-1).to(logits.dtype)
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in size")
    return logits, targets


def _focal_terms(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    """The focal weight times the binary cross-entropy, per pair."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    y = torch.sigmoid(logits)
    miss = (1.0 - targets) * y + targets * (1.0 - y)  # probability given to the wrong class
    weight = 0.5 * miss.pow(gamma)
    return weight * bce
