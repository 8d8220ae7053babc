"""Image retrieval in representation space: cosine top-k neighbours and top-k retrieval accuracy.

The paper (§4, "Qualitative analysis") retrieves "the top-10 most similar images in representation
space" for a random query and reports a top-10 retrieval accuracy (67.8% for ResNet-32 on CIFAR-10);
its main text names neither the similarity nor the gallery. Ours: cosine similarity, accuracy = share
of the k retrieved images whose label is the query's, averaged over queries (docs/protocols/retrieval-knn-tsne.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_topk", "retrieval_accuracy"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_features(name: str, features: Tensor) -> Tensor:
    features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, feature_dim) with N >= 1, got {tuple(features.shape)}")
    if not features.is_floating_point() or not torch.isfinite(features).all():
        raise ValueError(f"{name} must hold finite floating-point values (found {features.dtype} or NaN/inf)")
    return features


@torch.no_grad()
def cosine_topk(
    queries: Tensor, gallery: Tensor, k: int, *, exclude_self: bool = False, chunk: int = 4096
) -> tuple[Tensor, Tensor]:
    """The ``k`` gallery rows most cosine-similar to each query: ``(similarities, indices)``, both ``(Q, k)``.

    Rows come best first. Similarities are computed in ``chunk x chunk`` blocks with a running top-k, so
    memory stays at about ``chunk**2`` floats whatever the sizes (10k queries x 50k gallery is fine).
    ``exclude_self`` means the queries are the gallery itself (row i of each is the same image), and
    drops each query from its own neighbours. Everything runs on the queries' device.
    """
    queries, gallery = _check_features("queries", queries), _check_features("gallery", gallery)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries and gallery differ in dimension: {queries.shape[1]} vs {gallery.shape[1]}")
    if not _is_int(chunk) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    num_q, num_g = queries.shape[0], gallery.shape[0]
    if exclude_self and num_q != num_g:
        raise ValueError(f"exclude_self needs the queries to be the gallery, got {num_q} queries and {num_g} gallery rows")
    available = num_g - 1 if exclude_self else num_g
    if not _is_int(k) or not 1 <= k <= available:
        raise ValueError(f"k must be an integer in [1, {available}] for a gallery of {num_g}, got {k!r}")

    device = queries.device
    q = F.normalize(queries.float(), dim=1)
    g = F.normalize(gallery.to(device).float(), dim=1)
    out_sims = torch.empty(num_q, k, device=device)
    out_idx = torch.empty(num_q, k, dtype=torch.long, device=device)
    for qs in range(0, num_q, chunk):
        q_block = q[qs : qs + chunk]
        rows = torch.arange(q_block.shape[0], device=device)
        best_sims = torch.full((q_block.shape[0], 0), float("-inf"), device=device)
        best_idx = torch.empty((q_block.shape[0], 0), dtype=torch.long, device=device)
        for gs in range(0, num_g, chunk):
            sims = q_block @ g[gs : gs + chunk].t()  # (q chunk, g chunk)
            if exclude_self:
                own = rows + qs - gs  # column of each query's own row in this gallery block
                inside = (own >= 0) & (own < sims.shape[1])
                sims[rows[inside], own[inside]] = float("-inf")
            top = sims.topk(min(k, sims.shape[1]), dim=1)
            best_sims = torch.cat([best_sims, top.values], dim=1)
            best_idx = torch.cat([best_idx, top.indices + gs], dim=1)
            if best_sims.shape[1] > k or gs + chunk >= num_g:  # merge; the last merge also sorts
                keep = best_sims.topk(k, dim=1)
                best_sims, best_idx = keep.values, best_idx.gather(1, keep.indices)
        out_sims[qs : qs + chunk], out_idx[qs : qs + chunk] = best_sims, best_idx
    return out_sims, out_idx


def retrieval_accuracy(query_labels: Tensor, gallery_labels: Tensor, indices: Tensor) -> float:
    """Top-k retrieval accuracy in percent: the share of each query's ``k`` neighbours that carry its label, averaged.

    ``indices`` is ``(Q, k)`` rows of the gallery (as returned by :func:`cosine_topk`).
    """
    query_labels, gallery_labels = torch.as_tensor(query_labels), torch.as_tensor(gallery_labels)
    indices = torch.as_tensor(indices)
    if indices.ndim != 2 or indices.shape[0] == 0 or indices.shape[1] == 0:
        raise ValueError(f"indices must have shape (Q, k) with Q, k >= 1, got {tuple(indices.shape)}")
    if query_labels.shape != (indices.shape[0],):
        raise ValueError(f"query_labels must have shape ({indices.shape[0]},), got {tuple(query_labels.shape)}")
    if gallery_labels.ndim != 1:
        raise ValueError(f"gallery_labels must be one label per gallery row, got shape {tuple(gallery_labels.shape)}")
    if indices.is_floating_point() or int(indices.min()) < 0 or int(indices.max()) >= gallery_labels.shape[0]:
        raise ValueError(f"indices must be integer rows of the gallery, in [0, {gallery_labels.shape[0]})")
    retrieved = gallery_labels.to(indices.device)[indices]
    hits = retrieved == query_labels.to(indices.device).unsqueeze(1)
    return 100.0 * hits.double().mean().item()
