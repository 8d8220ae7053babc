"""Data-adaptive DBSCAN radii for RCL's hierarchy: quantiles of the k-th-neighbour distances.

DBSCAN makes a sample a core point at radius eps when at least `min_samples` samples (itself
included) lie within eps, i.e. when its distance d_k to its k-th nearest sample (itself the
first, k = min_samples) is <= eps. Taking eps_h as the q_h-quantile of d_k therefore makes about
a share q_h of the samples core points at level h: a small q gives many small, tight clusters
(the rest noise singletons), a larger q fewer and bigger ones. The rule reads the scale off the
features, so it works for any encoder, while fixed radii (the paper's 0.6 / 0.7 / 0.8) were tuned
for ResNet-50 on ImageNet. Distances are Euclidean between L2-normalised rows, d^2 = 2 - 2 cos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from relssl.cluster.offline import check_radii, increasing_levels, normalize_features

MAX_QUERIES = 10_000  # samples whose d_k enters the quantiles (all N serve as neighbours)
_CHUNK = 1024  # query rows per similarity block


def check_quantiles(quantiles: Sequence[float], name: str = "quantiles") -> tuple[float, ...]:
    """Validate per-level quantiles: in (0, 1), strictly increasing (finest level first)."""
    return increasing_levels(quantiles, name, lambda q: 0.0 < q < 1.0, "(0, 1)", "quantile")


def query_rows(n: int, max_queries: int = MAX_QUERIES) -> torch.Tensor:
    """At most `max_queries` row indices evenly strided over [0, n): a deterministic subsample."""
    if n <= max_queries:
        return torch.arange(n)
    return torch.from_numpy(np.linspace(0, n - 1, max_queries).round().astype(np.int64))


@torch.no_grad()
def kth_neighbour_distances(
    features: torch.Tensor | np.ndarray, k: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Distance from each query row (default: all) to its k-th nearest sample, itself counted first.

    Brute force in blocks of query rows on the features' device: neighbours are ranked by float32
    cosine, then the k-th one's distance is recomputed in float64 from the difference of the two
    unit vectors (2 - 2 cos loses precision for near neighbours). Returns float64 on the CPU.
    """
    x = normalize_features(features)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, {n}] (the number of samples); got {k}")
    rows = torch.arange(n) if rows is None else torch.as_tensor(rows).long()
    out = []
    for start in range(0, rows.numel(), _CHUNK):
        block = rows[start:start + _CHUNK].to(x.device)
        sim = x[block] @ x.T
        sim[torch.arange(block.numel(), device=x.device), block] = 2.0  # itself first, whatever the rounding
        kth = torch.topk(sim, k, dim=1).indices[:, -1]
        out.append((x[block].double() - x[kth].double()).norm(dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def adaptive_radii(
    features: torch.Tensor | np.ndarray, quantiles: Sequence[float], min_samples: int,
    max_queries: int = MAX_QUERIES,
) -> tuple[float, ...]:
    """One DBSCAN radius per level, finest first: the quantiles of the k-th-neighbour distances.

    k = max(min_samples, 2) (min_samples = 1 would make every distance 0). The quantiles are
    taken over at most `max_queries` evenly strided samples (their neighbours: all samples).
    Radii are rounded to 6 decimals and kept strictly increasing (ties, e.g. from duplicated
    features, are nudged up by 1e-6), so they pass `check_radii`.
    """
    qs = check_quantiles(quantiles)
    x = normalize_features(features)
    k = min(max(int(min_samples), 2), x.shape[0])
    dist = kth_neighbour_distances(x, k, query_rows(x.shape[0], max_queries))
    raw = torch.quantile(dist, torch.tensor(qs, dtype=torch.float64)).tolist()
    radii: list[float] = []
    for r in raw:  # d_k <= 2 on the unit sphere; ties (duplicated features) are nudged apart
        floor = radii[-1] + 1e-6 if radii else 1e-6
        radii.append(round(min(max(float(r), floor), 2.0), 6))
    return check_radii(radii, name="adaptive radii")
