"""Offline hierarchical label banks for RCL (Tang et al. 2022, §4.3 and Table 4).

Each level is clustered independently (DBSCAN per radius, or k-means per cluster count) and
the levels are then made to nest (the *cluster preserve property*: same cluster at level h
=> same cluster at every level above) by `enforce_hierarchy`. Labels are (N, L) LongTensors
whose column 0 is the instance level, arange(N); the other columns are compact ids 0..K_h-1.

Distances are Euclidean between L2-normalised features, d^2 = 2 - 2 cos, so a DBSCAN radius
r = 0.8 means cos >= 0.68 (0.7 -> 0.755, 0.6 -> 0.82).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from sklearn.cluster import DBSCAN

from relssl.cluster.kmeans import kmeans_assign


def normalize_features(features: torch.Tensor | np.ndarray, name: str = "features") -> torch.Tensor:
    """Validate a 2-D finite feature matrix and return its rows L2-normalised as float32."""
    x = torch.as_tensor(features)
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D (N, d) tensor; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    return torch.nn.functional.normalize(x, dim=1, eps=1e-12)


def compact(labels: torch.Tensor) -> torch.Tensor:
    """Relabel a 1-D id tensor to 0..K-1, keeping the order of the old ids."""
    return torch.unique(labels, sorted=True, return_inverse=True)[1]


def majority_parent(child: torch.Tensor, parent: torch.Tensor) -> torch.Tensor:
    """For each child id (compact, 0..K-1), the parent id holding most of its members.

    Ties go to the smallest parent id, so the result is deterministic. Returns (K,) long.
    """
    num_parents = int(parent.max()) + 1 if parent.numel() else 1
    key = child * num_parents + parent
    pairs, votes = torch.unique(key, sorted=True, return_counts=True)
    pair_child, pair_parent = pairs // num_parents, pairs % num_parents
    # Sorted by (child, parent); a stable sort on -votes, then on child, puts each child's
    # most-voted pair first, the smallest parent winning ties.
    order = torch.sort(-votes, stable=True).indices
    order = order[torch.sort(pair_child[order], stable=True).indices]
    pair_child, pair_parent = pair_child[order], pair_parent[order]
    first = torch.ones_like(pair_child, dtype=torch.bool)
    first[1:] = pair_child[1:] != pair_child[:-1]
    out = torch.empty(int(child.max()) + 1 if child.numel() else 0, dtype=torch.long)
    out[pair_child[first]] = pair_parent[first]
    return out


def enforce_hierarchy(labels: torch.Tensor) -> tuple[torch.Tensor, float, tuple[float, ...]]:
    """Make (N, L) labels nest, bottom-up, and measure how many samples already did.

    Column 0 is replaced by arange(N). For h = 1..L-2, each level-h cluster moves whole into
    the level-(h+1) cluster that holds the majority of its members (ties: smallest id); the
    next pair then uses the corrected level h+1. A sample *conforms* when, in the raw labels,
    its level-(h+1) label already equals that majority for its level-h cluster at every h
    (i.e. the enforcement would not move it). Returns (labels with compact ids, the share of
    conforming samples, the share per level pair).
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be 2-D (N, L); got shape {tuple(labels.shape)}")
    n, num_levels = labels.shape
    raw = torch.stack([compact(labels[:, h]) for h in range(num_levels)], dim=1) if n else labels.long()
    out = raw.clone()
    if n:
        out[:, 0] = torch.arange(n)
    conforms = torch.ones(n, dtype=torch.bool)
    per_level = []
    for h in range(1, num_levels - 1):
        raw_ok = majority_parent(raw[:, h], raw[:, h + 1])[raw[:, h]] == raw[:, h + 1]
        conforms &= raw_ok
        per_level.append(float(raw_ok.float().mean()) if n else 1.0)
        out[:, h + 1] = compact(majority_parent(out[:, h], out[:, h + 1])[out[:, h]])
    share = float(conforms.float().mean()) if n else 1.0
    return out, share, tuple(per_level)


def dbscan_labels(x: torch.Tensor, radius: float, min_samples: int) -> torch.Tensor:
    """scikit-learn DBSCAN on unit rows; noise points (-1) become singleton clusters.

    Returns compact ids: DBSCAN's clusters first, then one fresh id per noise point in sample
    order. `min_samples` counts the point itself, as in scikit-learn and the paper.
    """
    raw = DBSCAN(eps=radius, min_samples=min_samples, metric="euclidean").fit(x.cpu().numpy()).labels_
    labels = torch.from_numpy(raw.astype(np.int64))
    noise = labels < 0
    if noise.any():
        labels[noise] = int(labels.max()) + 1 + torch.arange(int(noise.sum()))
    return compact(labels)


def increasing_levels(values: Sequence[float], name: str, inside: Callable[[float], bool], interval: str,
                      unit: str, hint: str = "") -> tuple[float, ...]:
    """Validate one float per level: non-empty, each `inside` `interval`, strictly increasing (finest first)."""
    try:
        levels = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of floats; got {values!r}") from None
    if not levels:
        raise ValueError(f"{name} must not be empty")
    if not all(inside(v) for v in levels):
        raise ValueError(f"{name} must lie in {interval}; got {levels}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"{name} must increase from the finest level (smallest {unit}) to the coarsest; "
                         f"got {levels}{hint}")
    return levels


def check_radii(radii: Sequence[float], name: str = "radii") -> tuple[float, ...]:
    """Validate DBSCAN radii: in (0, 2], increasing (finest level first)."""
    return increasing_levels(radii, name, lambda r: 0.0 < r <= 2.0,
                             "(0, 2] (Euclidean distance between unit vectors)", "radius",
                             ". The paper lists r = 0.8/0.7/0.6 coarsest first: pass (0.6, 0.7, 0.8)")


def dbscan_levels(
    features: torch.Tensor | np.ndarray, radii: Sequence[float], min_samples: int = 4
) -> tuple[torch.Tensor, float]:
    """RCL's DBSCAN label bank (Table 4): one DBSCAN per radius, finest first, made to nest.

    Returns ((N, 1 + len(radii)) LongTensor with the instance column first, the share of
    samples that conformed to the hierarchy before `enforce_hierarchy`; the paper reports
    97.3% on ImageNet with r = 0.6/0.7/0.8 and min-samples 4).
    """
    labels, share, _ = dbscan_hierarchy(features, radii, min_samples)
    return labels, share


def dbscan_hierarchy(
    features: torch.Tensor | np.ndarray, radii: Sequence[float], min_samples: int = 4
) -> tuple[torch.Tensor, float, tuple[float, ...]]:
    """`dbscan_levels` plus the conformity share of each level pair (h, h+1)."""
    values = check_radii(radii)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"min_samples must be an int >= 1; got {min_samples!r}")
    x = normalize_features(features).cpu()
    columns = [torch.arange(x.shape[0])] + [dbscan_labels(x, r, min_samples) for r in values]
    return enforce_hierarchy(torch.stack(columns, dim=1))


def kmeans_levels(
    features: torch.Tensor | np.ndarray, cluster_counts: Sequence[int], seed: int = 0
) -> tuple[torch.Tensor, float]:
    """RCL's k-means label bank (Table 4): one k-means per count, finest (most clusters) first.

    Features are L2-normalised first; each level uses `kmeans_assign` seeded with seed + level.
    Returns ((N, 1 + len(cluster_counts)) LongTensor, share conforming before enforcement;
    the paper reports 73.88% with 1,000,000/500,000/250,000 clusters on ImageNet).
    """
    counts = tuple(cluster_counts)
    if not counts or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in counts):
        raise ValueError(f"cluster_counts must be a non-empty sequence of ints >= 1; got {cluster_counts!r}")
    if any(b >= a for a, b in zip(counts, counts[1:])):
        raise ValueError(
            f"cluster_counts must decrease from the finest level (most clusters) to the coarsest; got {counts}. "
            "The paper lists 250000/500000/1000000 coarsest first: pass (1000000, 500000, 250000)"
        )
    x = normalize_features(features).cpu()
    if counts[0] > x.shape[0]:
        raise ValueError(f"cluster_counts must not exceed N = {x.shape[0]}; got {counts}")
    columns = [torch.arange(x.shape[0])]
    for level, k in enumerate(counts, start=1):
        columns.append(torch.from_numpy(kmeans_assign(x, k, seed=seed + level)[0]))
    labels, share, _ = enforce_hierarchy(torch.stack(columns, dim=1))
    return labels, share
