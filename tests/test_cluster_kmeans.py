"""DeepCluster preprocessing, seeded k-means, empty-cluster filling and uniform sampling weights."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from relssl.cluster import (
    fill_empty_clusters,
    kmeans_assign,
    pca_whiten,
    pca_whiten_l2,
    uniform_cluster_sampler_weights,
)

# scikit-learn's OpenMP k-means spends far longer waiting on threads than computing on
# these tiny inputs (about 0.3 s per fit on a busy 2-core machine against 3 ms with one).
pytestmark = pytest.mark.usefixtures("one_thread")


def correlated_features(n: int = 600, d: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.linspace(0.1, 5.0, d)
    return (rng.normal(size=(n, d)) @ mixing + 3.0).astype(np.float32)


def blobs(k: int = 4, per: int = 50, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(k, d))
    x = np.concatenate([c + rng.normal(size=(per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), per)


def test_pca_whiten_components_decorrelated_with_unit_variance():
    z = pca_whiten(correlated_features(), dim=8, seed=0)
    assert z.shape == (600, 8) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(8), atol=1e-3)


def test_pca_whiten_l2_rows_unit_norm_and_accepts_tensors():
    x = correlated_features()
    z = pca_whiten_l2(x, dim=8, seed=0)
    assert z.shape == (600, 8) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(pca_whiten_l2(torch.from_numpy(x), dim=8, seed=0), z, atol=1e-6)
    np.testing.assert_array_equal(pca_whiten_l2(x, dim=8, seed=0), z)


def test_pca_whiten_errors():
    x = correlated_features(n=30, d=10)
    with pytest.raises(ValueError, match="dim"):
        pca_whiten_l2(x, dim=11, seed=0)
    with pytest.raises(ValueError, match="2-D"):
        pca_whiten_l2(x[0], dim=2, seed=0)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pca_whiten_l2(bad, dim=2, seed=0)


def test_kmeans_recovers_separated_blobs():
    x, truth = blobs()
    labels, centroids = kmeans_assign(x, num_clusters=4, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (200,)
    assert centroids.shape == (4, 5) and centroids.dtype == np.float32
    assert adjusted_rand_score(truth, labels) == 1.0
    for c in range(4):
        np.testing.assert_allclose(centroids[c], x[labels == c].mean(axis=0), atol=1e-4)


def test_kmeans_is_seeded():
    x = correlated_features(n=300, d=6, seed=1)  # no clear clusters: the init matters
    a = kmeans_assign(x, num_clusters=7, seed=5, n_init=2)
    b = kmeans_assign(torch.from_numpy(x), num_clusters=7, seed=5, n_init=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    others = [kmeans_assign(x, num_clusters=7, seed=s)[0] for s in range(6)]
    assert any(not np.array_equal(others[0], o) for o in others[1:])


def test_kmeans_leaves_no_empty_cluster_with_duplicated_points():
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # 3 distinct points, 5 clusters asked
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about too few distinct points
        labels, centroids = kmeans_assign(x, num_clusters=5, seed=0)
    assert np.bincount(labels, minlength=5).min() >= 1
    for c in range(5):
        np.testing.assert_allclose(centroids[c], x[labels == c].mean(axis=0), atol=1e-6)


def test_fill_empty_clusters_splits_a_non_empty_cluster():
    x, _ = blobs(k=2, per=20, d=3, seed=4)
    labels = np.repeat([0, 2], 20)  # cluster 1 and 3 empty
    centroids = np.stack([x[:20].mean(0), np.zeros(3), x[20:].mean(0), np.zeros(3)])
    new_labels, new_centroids = fill_empty_clusters(x, labels, centroids, seed=0)
    counts = np.bincount(new_labels, minlength=4)
    assert counts.min() >= 1 and counts.sum() == 40
    for c in range(4):
        np.testing.assert_allclose(new_centroids[c], x[new_labels == c].mean(axis=0), atol=1e-5)
    # only points of the split cluster changed label, and they went to an empty one
    moved = new_labels != labels
    assert set(new_labels[moved]) <= {1, 3}
    np.testing.assert_array_equal(labels, np.repeat([0, 2], 20))  # input untouched
    again = fill_empty_clusters(x, labels, centroids, seed=0)
    np.testing.assert_array_equal(again[0], new_labels)


def test_fill_empty_clusters_identical_points_and_too_few_points():
    x = np.ones((4, 2), dtype=np.float32)
    labels, _ = fill_empty_clusters(x, np.zeros(4, dtype=np.int64), np.ones((2, 2)), seed=0)
    assert sorted(np.bincount(labels)) == [1, 3]
    with pytest.raises(ValueError, match="cannot fill"):
        fill_empty_clusters(x[:2], np.array([0, 1]), np.ones((3, 2)), seed=0)


def test_kmeans_errors():
    x, _ = blobs(k=2, per=3)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans_assign(x, num_clusters=7, seed=0)
    with pytest.raises(ValueError, match="n_init"):
        kmeans_assign(x, num_clusters=2, seed=0, n_init=0)


def test_uniform_cluster_sampler_weights():
    labels = np.array([0, 0, 0, 1, 3, 3])
    w = uniform_cluster_sampler_weights(labels, num_clusters=4)  # cluster 2 empty
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5])
    per_cluster = np.bincount(labels, weights=w, minlength=4)
    np.testing.assert_allclose(per_cluster, [1.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(uniform_cluster_sampler_weights(torch.from_numpy(labels), 4), w)
    # drawing with these weights visits the clusters uniformly
    sampler = torch.utils.data.WeightedRandomSampler(
        w, num_samples=30000, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    drawn = np.bincount(labels[np.fromiter(sampler, dtype=np.int64)], minlength=4) / 30000
    np.testing.assert_allclose(drawn, [1 / 3, 1 / 3, 0.0, 1 / 3], atol=0.02)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        uniform_cluster_sampler_weights(labels, num_clusters=3)
    with pytest.raises(ValueError, match="integer"):
        uniform_cluster_sampler_weights(labels.astype(float), num_clusters=4)
