"""Label-free feature statistics against independent NumPy computations and hand-made extreme cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from relssl.evaluate.feature_stats import collapsed_share, effective_rank, feature_stats, uniformity


def _numpy_rank(x: np.ndarray) -> float:
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def _numpy_uniformity(x: np.ndarray) -> float:
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    terms = [math.exp(-2 * float(np.sum((z[i] - z[j]) ** 2))) for i, j in itertools.combinations(range(len(z)), 2)]
    return math.log(sum(terms) / len(terms))


def test_identical_features_have_rank_one_and_uniformity_zero() -> None:
    x = torch.tensor([[0.5, -2.0, 1.0]]).repeat(7, 1)
    assert effective_rank(x) == pytest.approx(1.0)
    assert uniformity(x) == pytest.approx(0.0, abs=1e-12)
    assert collapsed_share(x) == 1.0


def test_orthonormal_features_have_full_rank() -> None:
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    x = torch.from_numpy(q)
    assert effective_rank(x) == pytest.approx(8.0)
    assert uniformity(x) == pytest.approx(-4.0)  # every pair at distance sqrt(2)
    assert feature_stats(x)["effective_rank"] == pytest.approx(8.0)


def test_random_features_match_numpy() -> None:
    x = np.random.default_rng(1).normal(size=(30, 6)) + np.array([3, 0, 0, 0, 0, 0])
    t = torch.from_numpy(x).float()
    assert effective_rank(t) == pytest.approx(_numpy_rank(x), rel=1e-5)
    assert uniformity(t) == pytest.approx(_numpy_uniformity(x), rel=1e-5)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    stats = feature_stats(t)
    assert stats["std_mean"] == pytest.approx(z.std(axis=0).mean(), abs=1e-6)
    assert stats["images"] == 30 and stats["feature_dim"] == 6 and stats["collapsed_share"] == 0.0


def test_a_dead_dimension_counts_as_collapsed() -> None:
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    x[:, 2] = 1.0  # the same value for every image
    x[:, 3] = 0.0
    assert collapsed_share(x) == pytest.approx(0.25)  # the constant column still varies after L2 normalisation


def test_too_few_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        effective_rank(torch.ones(1, 3))
