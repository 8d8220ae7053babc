"""Label-free statistics of a feature matrix: how many directions the features use, and how spread they are.

They need no labels, so every run reports them, including a run on a folder of unlabelled
images where no accuracy can be measured (docs/protocols/feature-stats.md). A collapsed backbone
(one output for every image) scores rank 1, uniformity 0 and all dimensions collapsed.
"""

from __future__ import annotations

import math

import torch

__all__ = ["COLLAPSE_FRACTION", "collapsed_share", "effective_rank", "feature_stats", "normalized_std", "uniformity"]

#: A dimension is collapsed when its std over images, on L2-normalised features, is below this
#: fraction of 1/sqrt(d), the std of a dimension of features spread uniformly over the sphere.
COLLAPSE_FRACTION = 0.01


def _as_matrix(features: torch.Tensor) -> torch.Tensor:
    """The (n, d) features as float64 on the CPU; a ValueError for another shape or fewer than 2 rows."""
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"features must be (n, d) with n >= 2 and d >= 1, got {tuple(features.shape)}")
    return features.detach().to("cpu", torch.float64)


def _l2_normalized(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length (a zero row stays zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def effective_rank(features: torch.Tensor) -> float:
    """RankMe (Garrido et al., 2023): exp(-sum_k p_k log p_k), p_k = s_k / sum_j s_j over the singular values s.

    The features are taken as they are (not centred). Between 1 (one direction, or all rows equal)
    and min(n, d) (all singular values equal); 0 for all-zero features.
    """
    s = torch.linalg.svdvals(_as_matrix(features))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def uniformity(features: torch.Tensor, t: float = 2.0) -> float:
    """Wang & Isola (2020): log( mean over pairs i < j of exp(-t ||z_i - z_j||^2) ), z = f / ||f||, t = 2.

    0 when all features point one way; lower is more uniform on the sphere: never below
    -2t * n / (n - 1) (Jensen), near -2t = -4 for features spread evenly over a high-dimensional sphere.
    """
    z = _l2_normalized(_as_matrix(features))
    n = z.shape[0]
    logits = -t * torch.cdist(z, z).square()
    logits.fill_diagonal_(-math.inf)  # the mean over i != j equals the mean over pairs i < j
    return float(torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1)))


def normalized_std(features: torch.Tensor) -> torch.Tensor:
    """The std over images of every dimension of the L2-normalised features (population std, n in the divisor)."""
    return _l2_normalized(_as_matrix(features)).std(dim=0, correction=0)


def collapsed_share(features: torch.Tensor, fraction: float = COLLAPSE_FRACTION) -> float:
    """Share of dimensions whose normalised std is below `fraction` / sqrt(d) (see COLLAPSE_FRACTION)."""
    std = normalized_std(features)
    return float((std < fraction / math.sqrt(std.numel())).double().mean())


def feature_stats(features: torch.Tensor) -> dict[str, float | int]:
    """All the statistics of an (n, d) feature matrix, under the names metrics.json uses."""
    n, d = features.shape[0], features.shape[1]
    std = normalized_std(features)
    return {
        "images": int(n),
        "feature_dim": int(d),
        "effective_rank": round(effective_rank(features), 4),
        "uniformity": round(uniformity(features), 4),
        "std_mean": round(float(std.mean()), 6),
        "std_uniform": round(1 / math.sqrt(d), 6),  # the std_mean of features spread evenly over the sphere
        "collapsed_share": round(collapsed_share(features), 4),
    }
