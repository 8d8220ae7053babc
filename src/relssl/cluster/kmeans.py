"""DeepCluster's pseudo-labelling step (Caron et al., 2018, §3.2-3.3) with scikit-learn.

Features are PCA-reduced with whitening and L2-normalised, clustered with k-means, and the
images are then sampled uniformly over the pseudo-labels. Everything is seeded explicitly
(the Relational Reasoning reference code seeds its k-means from the clock).

Empty clusters (DeepCluster §3.3): scikit-learn's Lloyd iterations already relocate a centre
that loses all its points to a far-away point, so an empty cluster in the final labels is rare
(it happens with duplicated points or N close to k). `kmeans_assign` still applies
DeepCluster's rule afterwards through `fill_empty_clusters`, so every label 0..k-1 is used.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

_SPLIT_EPS = 1.0 / 1024.0  # relative centroid perturbation used by faiss, DeepCluster's k-means


def _as_2d_float32(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-D (N, d) array; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


def pca_whiten(features: np.ndarray | torch.Tensor, dim: int, seed: int) -> np.ndarray:
    """PCA to `dim` components with whitening: zero mean, unit variance (ddof = 1), uncorrelated.

    scikit-learn's PCA(whiten=True); `seed` fixes its randomised SVD solver when it picks one.
    Returns (N, dim) float32; see `pca_whiten_l2` for DeepCluster's full preprocessing.
    """
    x = _as_2d_float32(features)
    n, d = x.shape
    if not 1 <= dim <= min(n, d):
        raise ValueError(f"dim must be between 1 and min(N, d) = {min(n, d)}; got {dim}")
    z = PCA(n_components=dim, whiten=True, random_state=seed).fit_transform(x)
    if not np.isfinite(z).all():
        raise ValueError(f"PCA whitening produced non-finite values: the features have rank < dim={dim}")
    return z.astype(np.float32)


def pca_whiten_l2(features: np.ndarray | torch.Tensor, dim: int, seed: int) -> np.ndarray:
    """PCA to `dim` components with whitening, then L2-normalise each row (DeepCluster §3.3).

    Uses scikit-learn's PCA(whiten=True): before the normalisation every component has zero
    mean and unit variance (ddof = 1) and the components are uncorrelated. `seed` fixes the
    randomised SVD solver when scikit-learn picks it. Returns (N, dim) float32. DeepCluster
    uses dim = 256; the Relational Reasoning reference code keeps d (halves it when d >= 512).
    """
    z = pca_whiten(features, dim, seed)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.maximum(norms, 1e-12)).astype(np.float32)


def fill_empty_clusters(
    features: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    centroids: np.ndarray,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """DeepCluster's empty-cluster fix (Caron et al., 2018, §3.3), applied after k-means.

    For each empty cluster e, pick a non-empty cluster j at random (probability proportional to
    |j| - 1, as faiss does), perturb its centroid into c_j +/- eps |c_j| (alternating sign per
    dimension, eps = 1/1024) and reassign j's points to the nearer of the two. If that leaves
    one side empty (identical points), j's point farthest from c_j moves to e. Both centroids
    are then set to their members' means. Returns new (labels int64, centroids float32).
    """
    x = _as_2d_float32(features)
    labels = np.asarray(labels, dtype=np.int64).copy()
    centroids = np.asarray(centroids, dtype=np.float32).copy()
    k = centroids.shape[0]
    if labels.shape != (x.shape[0],) or labels.min(initial=0) < 0 or labels.max(initial=0) >= k:
        raise ValueError(f"labels must be ({x.shape[0]},) with values in [0, {k})")
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=k)
    sign = np.where(np.arange(x.shape[1]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    for e in np.flatnonzero(counts == 0):
        spare = np.maximum(counts - 1, 0).astype(np.float64)
        if spare.sum() == 0:
            raise ValueError(f"cannot fill empty clusters: {x.shape[0]} points for {k} clusters")
        j = int(rng.choice(k, p=spare / spare.sum()))
        members = np.flatnonzero(labels == j)
        c = centroids[j]
        delta = _SPLIT_EPS * sign * np.abs(c)
        to_e = np.linalg.norm(x[members] - (c + delta), axis=1) < np.linalg.norm(x[members] - (c - delta), axis=1)
        if to_e.all() or not to_e.any():
            to_e = np.zeros(members.size, dtype=bool)
            to_e[int(np.argmax(np.linalg.norm(x[members] - c, axis=1)))] = True
        labels[members[to_e]] = e
        centroids[e] = x[members[to_e]].mean(axis=0)
        centroids[j] = x[members[~to_e]].mean(axis=0)
        counts[e], counts[j] = int(to_e.sum()), int((~to_e).sum())
    return labels, centroids


def kmeans_assign(
    features: np.ndarray | torch.Tensor,
    num_clusters: int,
    seed: int,
    n_init: int = 1,
    max_iter: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means (k-means++ init, Lloyd) of DeepCluster's pseudo-labelling step.

    Returns labels (N,) int64 and centroids (num_clusters, d) float32, with no empty cluster
    (see `fill_empty_clusters`). DeepCluster runs 20 iterations of faiss k-means; the Relational
    Reasoning reference code uses max_iter=30, n_init=5 and k = 10 x the number of classes.
    """
    x = _as_2d_float32(features)
    if not 1 <= num_clusters <= x.shape[0]:
        raise ValueError(f"num_clusters must be between 1 and N = {x.shape[0]}; got {num_clusters}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1; got n_init={n_init}, max_iter={max_iter}")
    km = KMeans(n_clusters=num_clusters, init="k-means++", n_init=n_init, max_iter=max_iter, random_state=seed)
    km.fit(x)
    labels = km.labels_.astype(np.int64)
    centroids = km.cluster_centers_.astype(np.float32)
    if np.bincount(labels, minlength=num_clusters).min() == 0:
        labels, centroids = fill_empty_clusters(x, labels, centroids, seed)
    return labels, centroids


def uniform_cluster_sampler_weights(labels: np.ndarray | torch.Tensor, num_clusters: int) -> np.ndarray:
    """Per-image sampling weights 1/|c(i)| so every non-empty cluster is drawn equally often.

    DeepCluster (§3.3) samples images uniformly over pseudo-labels to avoid trivial
    parametrisations; feed these (N,) float64 weights, which sum to the number of non-empty
    clusters, to `torch.utils.data.WeightedRandomSampler` (it normalises them).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array; got shape {labels.shape}, dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_clusters):
        raise ValueError(f"labels must lie in [0, {num_clusters}); got range [{labels.min()}, {labels.max()}]")
    counts = np.bincount(labels, minlength=num_clusters)
    return 1.0 / counts[labels].astype(np.float64)
