"""Deep InfoMax: JSD estimator against NumPy, DIMHeads shapes, training direction, sign handling."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relssl.losses.infomax import DIMHeads, grad_reverse, jsd_mi, jsd_mi_local, local_global_scores


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def numpy_jsd_mi_local(g: np.ndarray, m: np.ndarray) -> float:
    """Reference: loop over (global i, image j, position l); i == j positive, else negative."""
    b, e, h, w = m.shape
    pos, neg = [], []
    for i in range(b):
        for j in range(b):
            for y in range(h):
                for x in range(w):
                    s = float(np.dot(g[i].astype(np.float64), m[j, :, y, x]))
                    (pos if i == j else neg).append(s)
    return float(np.mean(-softplus(-np.array(pos))) - np.mean(softplus(np.array(neg))))


def test_jsd_mi_matches_formula():
    rng = np.random.default_rng(0)
    p = rng.normal(scale=4.0, size=37).astype(np.float32)
    n = rng.normal(scale=4.0, size=91).astype(np.float32)
    got = jsd_mi(torch.from_numpy(p), torch.from_numpy(n)).item()
    assert got == pytest.approx(np.mean(-softplus(-p)) - np.mean(softplus(n)), rel=1e-5)
    # perfectly separated scores reach the bound's maximum 0; all-zero scores give -2 log 2
    assert jsd_mi(torch.full((3,), 100.0), torch.full((5,), -100.0)).item() == pytest.approx(0.0, abs=1e-6)
    assert jsd_mi(torch.zeros(3), torch.zeros(5)).item() == pytest.approx(-2 * np.log(2), rel=1e-6)


@pytest.mark.parametrize("b,e,h,w", [(2, 3, 1, 1), (4, 5, 3, 2), (6, 8, 4, 4)])
def test_jsd_mi_local_matches_numpy_loop(b, e, h, w):
    rng = np.random.default_rng(b * 10 + e)
    g = rng.normal(size=(b, e)).astype(np.float32)
    m = rng.normal(size=(b, e, h, w)).astype(np.float32)
    got = jsd_mi_local(torch.from_numpy(g), torch.from_numpy(m)).item()
    assert got == pytest.approx(numpy_jsd_mi_local(g, m), rel=1e-5)
    flat = jsd_mi_local(torch.from_numpy(g), torch.from_numpy(m).flatten(2)).item()
    assert flat == pytest.approx(got, rel=1e-6)


def test_local_scores_layout_and_errors():
    g = torch.randn(3, 4)
    m = torch.randn(3, 4, 2, 5)
    s = local_global_scores(g, m)
    assert s.shape == (3, 3, 10)
    assert torch.allclose(s[0, 2, 7], g[0] @ m[2, :, 1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        jsd_mi_local(g[:1], m[:1])
    with pytest.raises(ValueError, match="local_emb"):
        jsd_mi_local(g, torch.randn(3, 5, 2, 2))


def test_dim_heads_shapes_and_loss_composition():
    torch.manual_seed(0)
    heads = DIMHeads(global_dim=16, local_channels=6, embed_dim=12, hidden_dim=20, beta=1.0, gamma=0.1)
    y, m = torch.randn(5, 16), torch.randn(5, 6, 4, 3)
    assert heads.global_encoder(y).shape == (5, 12)
    assert heads.local_encoder(m).shape == (5, 12, 4, 3)
    v = torch.rand(5, 16)
    out = heads(y, m, prior_samples=v)
    assert out.loss.shape == out.local_mi.shape == out.prior.shape == ()
    assert out.local_mi.item() <= 0.0
    assert out.loss.item() == pytest.approx(-out.local_mi.item() + 0.1 * out.prior.item(), rel=1e-6)
    d_real, d_fake = heads.prior_discriminator(v), heads.prior_discriminator(y)
    bce = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy_with_logits(
        d_fake, torch.zeros_like(d_fake)
    )
    assert out.prior.item() == pytest.approx(bce.item(), rel=1e-5)
    no_prior = DIMHeads(16, 6, embed_dim=12, hidden_dim=20, gamma=0.0)(y, m)
    assert no_prior.prior.item() == 0.0 and no_prior.loss.item() == pytest.approx(-no_prior.local_mi.item())


def test_dim_heads_validate_arguments():
    with pytest.raises(ValueError, match="local_channels"):
        DIMHeads(8, 0)
    with pytest.raises(ValueError, match="gamma"):
        DIMHeads(8, 4, gamma=-0.1)
    with pytest.raises(ValueError, match="prior_samples"):
        DIMHeads(8, 4).prior_loss(torch.randn(3, 8), torch.rand(3, 7))


def test_one_optimizer_step_increases_local_mi():
    torch.manual_seed(0)
    heads = DIMHeads(global_dim=8, local_channels=4, embed_dim=16, hidden_dim=32)
    # a toy "backbone": the global vector is a linear read-out of the pooled feature map
    m = torch.nn.Parameter(torch.randn(6, 4, 5, 5))
    readout = torch.nn.Linear(4, 8)
    opt = torch.optim.Adam([m, *readout.parameters(), *heads.parameters()], lr=1e-3)
    v = torch.rand(6, 8)

    def forward():
        return heads(readout(m.mean(dim=(2, 3))), m, prior_samples=v)

    before = forward()
    opt.zero_grad()
    before.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in heads.parameters())
    opt.step()
    with torch.no_grad():
        after = forward()
    assert after.local_mi.item() > before.local_mi.item()


def test_prior_term_reverses_the_encoder_gradient_only():
    torch.manual_seed(1)
    heads = DIMHeads(global_dim=6, local_channels=3, embed_dim=8, hidden_dim=8, beta=0.0, gamma=0.5)
    y = torch.randn(10, 6, requires_grad=True)
    m = torch.randn(10, 3, 2, 2)
    v = torch.rand(10, 6)
    heads(y, m, prior_samples=v).loss.backward()
    grad_y = y.grad.clone()
    grads_d = [p.grad.clone() for p in heads.prior_discriminator.parameters()]
    # the plain discriminator cross-entropy, no reversal
    heads.zero_grad()
    y.grad = None
    real, fake = heads.prior_discriminator(v), heads.prior_discriminator(y)
    (0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())).backward()
    assert torch.allclose(grad_y, -y.grad, atol=1e-7)
    for got, plain in zip(grads_d, (p.grad for p in heads.prior_discriminator.parameters())):
        assert torch.allclose(got, plain, atol=1e-7)


def test_single_optimizer_step_is_adversarial():
    # One SGD step on all parameters: D gets better at telling y from the prior (its loss at
    # the old y falls) while y moves to where D says "prior" (D's logit on the new y rises).
    torch.manual_seed(2)
    heads = DIMHeads(global_dim=4, local_channels=2, embed_dim=4, hidden_dim=4, beta=0.0, gamma=1.0, prior_hidden=(16,))
    y = torch.nn.Parameter(torch.randn(64, 4) + 3.0)
    m = torch.randn(64, 2, 1, 1)
    v = torch.rand(64, 4)
    opt = torch.optim.SGD([y, *heads.parameters()], lr=0.05)
    y_old = y.detach().clone()
    d_old = copy.deepcopy(heads.prior_discriminator)
    out = heads(y, m, prior_samples=v)
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    with torch.no_grad():
        assert heads.prior_loss(y_old, v).item() < out.prior.item()
        assert d_old(y).mean() > d_old(y_old).mean()


def test_grad_reverse_is_identity_forward():
    x = torch.randn(3, requires_grad=True)
    out = grad_reverse(x)
    assert torch.equal(out, x)
    out.sum().backward()
    assert torch.equal(x.grad, -torch.ones(3))


def test_dim_heads_under_autocast_returns_finite_float32():
    torch.manual_seed(3)
    heads = DIMHeads(global_dim=8, local_channels=4, embed_dim=8, hidden_dim=8)
    y, m = torch.randn(4, 8), torch.randn(4, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = heads(y, m)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
