"""In-batch InfoNCE (MoCo v3 / NNCLR) and SimSiam's negative cosine against NumPy references with loops."""

import math

import numpy as np
import pytest
import torch

from relssl.losses import cross_view_nce, negative_cosine


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def numpy_cross_view_nce(q, keys, t, offset) -> float:
    """Query b's positive is key row offset + b; every key row is in the denominator."""
    out = []
    for b in range(len(q)):
        qb = _unit(q[b])
        logits = [qb @ _unit(k) / t for k in keys]
        den = sum(math.exp(x) for x in logits)
        out.append(-math.log(math.exp(logits[offset + b]) / den))
    return float(np.mean(out))


def numpy_negative_cosine(p, z) -> float:
    return float(-np.mean([_unit(p[b]) @ _unit(z[b]) for b in range(len(p))]))


@pytest.mark.parametrize("b,d,t", [(1, 3, 0.2), (4, 8, 0.1), (9, 5, 1.0), (6, 16, 0.05)])
def test_cross_view_nce_matches_numpy_without_offset(b, d, t):
    rng = np.random.default_rng(b * 10 + d)
    q = rng.normal(size=(b, d)).astype(np.float32)
    k = rng.normal(size=(b, d)).astype(np.float32)
    got = cross_view_nce(torch.from_numpy(q), torch.from_numpy(k), temperature=t)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(numpy_cross_view_nce(q, k, t, 0), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("world,rank", [(2, 0), (2, 1), (4, 2), (3, 2)])
def test_cross_view_nce_offset_picks_this_ranks_rows_of_a_gathered_batch(world, rank):
    b, d, t = 5, 7, 0.2
    rng = np.random.default_rng(world * 7 + rank)
    q = rng.normal(size=(b, d)).astype(np.float32)
    keys = rng.normal(size=(world * b, d)).astype(np.float32)  # as after gathering `world` ranks
    got = cross_view_nce(torch.from_numpy(q), torch.from_numpy(keys), t, offset=rank * b).item()
    assert got == pytest.approx(numpy_cross_view_nce(q, keys, t, rank * b), rel=1e-5)
    # the offset matters: other positions give a different loss
    other = (rank + 1) % world
    assert got != pytest.approx(numpy_cross_view_nce(q, keys, t, other * b), rel=1e-3)


def test_cross_view_nce_hand_computed_on_orthogonal_keys_and_scale_invariant():
    torch.manual_seed(0)
    keys = torch.eye(4) * 3.0  # orthogonal keys
    q = keys.clone() * 0.5
    loss = cross_view_nce(q, keys, temperature=0.5)
    # each query: cos 1 with its key, 0 with the 3 others
    ref = -math.log(math.exp(2.0) / (math.exp(2.0) + 3.0))
    assert loss.item() == pytest.approx(ref, rel=1e-6)
    assert cross_view_nce(q * 7.0, keys, temperature=0.5).item() == pytest.approx(ref, rel=1e-6)


def test_cross_view_nce_gradient_matches_numpy_finite_difference():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(3, 4))
    keys = rng.normal(size=(6, 4))
    qt = torch.tensor(q, dtype=torch.float32, requires_grad=True)
    cross_view_nce(qt, torch.tensor(keys, dtype=torch.float32), 0.5, offset=3).backward()
    eps = 1e-5
    num = np.zeros_like(q)
    for i in range(q.shape[0]):
        for j in range(q.shape[1]):
            hi, lo = q.copy(), q.copy()
            hi[i, j] += eps
            lo[i, j] -= eps
            num[i, j] = (numpy_cross_view_nce(hi, keys, 0.5, 3) - numpy_cross_view_nce(lo, keys, 0.5, 3)) / (2 * eps)
    np.testing.assert_allclose(qt.grad.numpy(), num, rtol=1e-3, atol=1e-5)


def test_cross_view_nce_errors_name_the_problem():
    q, keys = torch.randn(4, 8), torch.randn(8, 8)
    with pytest.raises(ValueError, match=r"offset 5 \+ batch 4 exceeds the 8 key rows"):
        cross_view_nce(q, keys, offset=5)
    with pytest.raises(ValueError, match=r"offset -1 \+ batch 4 exceeds the 8 key rows"):
        cross_view_nce(q, keys, offset=-1)
    cross_view_nce(q, keys, offset=4)  # the last rank's rows are fine
    with pytest.raises(ValueError, match=r"must share d; got \(4, 8\) and \(8, 3\)"):
        cross_view_nce(q, torch.randn(8, 3))
    with pytest.raises(ValueError, match="must share d"):
        cross_view_nce(torch.randn(8), keys)
    with pytest.raises(ValueError, match="temperature must be > 0; got 0"):
        cross_view_nce(q, keys, temperature=0)


@pytest.mark.parametrize("b,d", [(1, 2), (5, 3), (8, 32)])
def test_negative_cosine_matches_numpy(b, d):
    rng = np.random.default_rng(b + d)
    p = rng.normal(size=(b, d)).astype(np.float32)
    z = rng.normal(size=(b, d)).astype(np.float32)
    got = negative_cosine(torch.from_numpy(p), torch.from_numpy(z))
    assert got.dim() == 0 and got.dtype == torch.float32
    assert got.item() == pytest.approx(numpy_negative_cosine(p, z), rel=1e-5, abs=1e-6)
    assert -1.0 <= got.item() <= 1.0


def test_negative_cosine_extremes():
    z = torch.randn(6, 5)
    assert negative_cosine(z * 3.0, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_cosine(-z, z).item() == pytest.approx(1.0, abs=1e-6)


def test_negative_cosine_sends_no_gradient_to_z_but_the_right_one_to_p():
    rng = np.random.default_rng(11)
    p_np, z_np = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    p = torch.tensor(p_np, dtype=torch.float32, requires_grad=True)
    z = torch.tensor(z_np, dtype=torch.float32, requires_grad=True)
    negative_cosine(p, z).backward()
    assert z.grad is None
    # d/dp of -mean_b cos(p_b, z_b) = -(1/B) (z_hat - cos * p_hat) / |p|
    expected = np.zeros_like(p_np)
    for b in range(4):
        ph, zh = _unit(p_np[b]), _unit(z_np[b])
        expected[b] = -(zh - (ph @ zh) * ph) / np.linalg.norm(p_np[b]) / 4
    np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-4, atol=1e-6)


def test_negative_cosine_shape_errors():
    with pytest.raises(ValueError, match=r"same shape; got \(4, 3\) and \(4, 2\)"):
        negative_cosine(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"same shape; got \(4,\) and \(4,\)"):
        negative_cosine(torch.randn(4), torch.randn(4))
