"""NT-Xent and InfoNCE against independent NumPy references written with loops."""

import math

import numpy as np
import pytest
import torch

from relssl.losses.contrastive import info_nce, nt_xent


def numpy_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float, form: str) -> float:
    """Reference: loop over the 2N anchors, denominator over every other row."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = z.shape[0]
    p = []
    for r in range(n2):
        pos = (r + n2 // 2) % n2
        den = sum(np.exp(z[r] @ z[k] / t) for k in range(n2) if k != r)
        p.append(np.exp(z[r] @ z[pos] / t) / den)
    p = np.array(p)
    return float(-np.log(p).mean()) if form == "standard" else float(-np.log(p.mean()))


def numpy_reference_code_simclr(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """The Relational Reasoning reference code's computation re-done in NumPy: views interleaved
    (image n -> rows 2n, 2n+1), cosine matrix, rows swapped pairwise, diagonal over column sums
    minus exp(1/t), then -log of the mean."""
    x = np.empty((2 * len(z1), z1.shape[1]))
    x[0::2], x[1::2] = z1, z2
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    e = np.exp((x @ x.T) / (norms * norms.T) / t)
    idx = np.arange(len(x))
    idx[0::2] += 1
    idx[1::2] -= 1
    e = e[idx]
    ratio = np.diag(e) / (e.sum(0) - np.exp(1 / t))
    return float(-np.log(ratio.mean()))


def numpy_info_nce(q, k, negs, t) -> float:
    def unit(v):
        return v / np.linalg.norm(v)

    out = []
    for b in range(len(q)):
        nb = negs if negs.ndim == 2 else negs[b]
        qb = unit(q[b].astype(np.float64))
        pos = np.exp(qb @ unit(k[b]) / t)
        neg = sum(np.exp(qb @ unit(m) / t) for m in nb)
        out.append(-np.log(pos / (pos + neg)))
    return float(np.mean(out))


@pytest.mark.parametrize("form", ["standard", "mean_log"])
@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.1), (16, 4, 1.0), (7, 32, 0.07)])
def test_nt_xent_matches_numpy_reference(form, n, d, t):
    rng = np.random.default_rng(n * 31 + d)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = rng.normal(size=(n, d)).astype(np.float32)
    got = nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), temperature=t, form=form).item()
    assert got == pytest.approx(numpy_nt_xent(z1, z2, t, form), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n,t", [(4, 0.5), (9, 0.2)])
def test_mean_log_form_matches_the_reference_code_computation(n, t):
    rng = np.random.default_rng(n)
    z1, z2 = rng.normal(size=(2, n, 6))
    got = nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), temperature=t, form="mean_log").item()
    assert got == pytest.approx(numpy_reference_code_simclr(z1, z2, t), rel=1e-5)


def test_nt_xent_hand_computed_two_images():
    # Both views identical and the two images orthogonal: each anchor sees its positive at
    # cosine 1 and two negatives at cosine 0, so p = e^{1/t} / (e^{1/t} + 2) for all 4 anchors.
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = 0.5
    expected = math.log(1.0 + 2.0 * math.exp(-1.0 / t))
    for form in ("standard", "mean_log"):
        assert nt_xent(z, z.clone(), t, form).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_temperature_limits_and_scale_invariance():
    rng = np.random.default_rng(0)
    n = 6
    z1 = torch.from_numpy(rng.normal(size=(n, 5)).astype(np.float32))
    z2 = z1 + 0.01 * torch.from_numpy(rng.normal(size=(n, 5)).astype(np.float32))
    # t -> infinity: all 2N-1 candidates equally likely
    assert nt_xent(z1, z2, temperature=1e4).item() == pytest.approx(math.log(2 * n - 1), rel=1e-3)
    # t -> 0 with the positive the nearest neighbour: loss -> 0, and stays finite
    small = nt_xent(z1, z2, temperature=1e-3)
    assert torch.isfinite(small) and small.item() < 1e-3
    # lower temperature sharpens: loss decreases monotonically here
    losses = [nt_xent(z1, z2, temperature=t).item() for t in (2.0, 1.0, 0.5, 0.1)]
    assert losses == sorted(losses, reverse=True)
    # features are L2-normalised inside
    assert nt_xent(3.0 * z1, 0.25 * z2).item() == pytest.approx(nt_xent(z1, z2).item(), rel=1e-6)


def test_mean_log_is_at_most_standard():
    rng = np.random.default_rng(3)
    z1, z2 = (torch.from_numpy(rng.normal(size=(10, 4)).astype(np.float32)) for _ in range(2))
    assert nt_xent(z1, z2, form="mean_log") <= nt_xent(z1, z2, form="standard") + 1e-6


@pytest.mark.parametrize("form", ["standard", "mean_log"])
def test_nt_xent_gradient_finite_at_low_temperature(form):
    torch.manual_seed(0)
    z1 = torch.randn(32, 16, requires_grad=True)
    z2 = torch.randn(32, 16, requires_grad=True)
    loss = nt_xent(z1, z2, temperature=0.01, form=form)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert z1.grad.abs().sum() > 0


def test_nt_xent_computes_in_float32_under_autocast():
    torch.manual_seed(1)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    ref = nt_xent(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nt_xent(z1, z2, 0.1)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-6)
    half = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.1)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(ref.item(), rel=2e-2)


def test_nt_xent_equals_info_nce_with_the_other_rows_as_negatives():
    torch.manual_seed(2)
    n, d, t = 5, 7, 0.3
    z1, z2 = torch.randn(n, d), torch.randn(n, d)
    z = torch.cat([z1, z2])
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    negs = torch.stack([z[[k for k in range(2 * n) if k not in (r, int(pos[r]))]] for r in range(2 * n)])
    assert info_nce(z, z[pos], negs, temperature=t).item() == pytest.approx(nt_xent(z1, z2, t).item(), rel=1e-5)


def test_nt_xent_errors():
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="standard, mean_log"):
        nt_xent(z, z, form="log_mean")
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(z, torch.zeros(5, 3))


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_info_nce_matches_numpy(shared, t):
    rng = np.random.default_rng(int(t * 100) + shared)
    b, m, d = 6, 9, 5
    q, k = rng.normal(size=(2, b, d)).astype(np.float32)
    negs = rng.normal(size=(m, d) if shared else (b, m, d)).astype(np.float32)
    got = info_nce(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(negs), temperature=t).item()
    assert got == pytest.approx(numpy_info_nce(q, k, negs, t), rel=1e-5)


def test_info_nce_without_normalisation_uses_raw_dot_products():
    q = torch.tensor([[2.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # logits 2, 0, 2 -> -log(e^2 / (2 e^2 + 1))
    expected = -math.log(math.exp(2) / (2 * math.exp(2) + 1))
    assert info_nce(q, k, negs, temperature=1.0, normalize=False).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_gradient_finite_and_errors():
    q = torch.randn(4, 8, requires_grad=True)
    loss = info_nce(q, torch.randn(4, 8), torch.randn(100, 8), temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(q.grad).all()
    with pytest.raises(ValueError, match="negatives"):
        info_nce(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(3, 9))
    with pytest.raises(ValueError, match="negatives"):
        info_nce(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(3, 2, 8))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(3, 8), temperature=-1.0)
