"""Relative contrastive loss (Tang et al. 2022, Eq. 2-3) against a NumPy reference with loops,
its reduction to InfoNCE, and the pull/push dynamics of its gradient (Eq. 4, 7-9)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relssl.losses.contrastive import info_nce
from relssl.losses.relative import relative_contrastive_loss


def numpy_rcl(qs, zp, queue, positive, tau) -> float:
    """Eq. 3 term by term for every query n and criterion i, alpha_i = 1/H (Eq. 2), mean over n."""

    def unit(v):
        return np.asarray(v, dtype=np.float64) / np.linalg.norm(v)

    h, n = len(qs), len(zp)
    per_query = []
    for b in range(n):
        total = 0.0
        for i in range(h):
            qi, key = unit(qs[i][b]), unit(zp[b])
            e_key = math.exp(qi @ key / tau)
            den = e_key + sum(math.exp(qi @ unit(s) / tau) for s in queue)
            indicator = 1.0 if positive[b, i] else 0.0
            num = indicator * e_key + (1.0 - indicator)
            total += (1.0 / h) * -math.log(num / den)
        per_query.append(total)
    return float(np.mean(per_query))


def _random_inputs(rng, h, n, d, k, p_true=0.5):
    qs = [rng.normal(size=(n, d)).astype(np.float32) for _ in range(h)]
    zp = rng.normal(size=(n, d)).astype(np.float32)
    queue = rng.normal(size=(k, d)).astype(np.float32)
    positive = rng.random(size=(n, h)) < p_true
    return qs, zp, queue, positive


def _call(qs, zp, queue, positive, tau):
    return relative_contrastive_loss(
        [torch.from_numpy(x) for x in qs],
        torch.from_numpy(zp),
        torch.from_numpy(queue),
        torch.from_numpy(positive),
        tau=tau,
    )


@pytest.mark.parametrize("h", [1, 2, 3])
@pytest.mark.parametrize("n,d,k,tau", [(1, 4, 3, 0.1), (6, 8, 10, 0.1), (9, 16, 5, 0.5), (5, 3, 0, 0.2)])
def test_matches_numpy_reference_with_mixed_flags(h, n, d, k, tau):
    rng = np.random.default_rng(100 * h + n + d + k)
    qs, zp, queue, positive = _random_inputs(rng, h, n, d, k)
    if n > 1:  # make sure both kinds of flag occur
        positive[0, 0], positive[1, -1] = True, False
    got = _call(qs, zp, queue, positive, tau)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert got.item() == pytest.approx(numpy_rcl(qs, zp, queue, positive, tau), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("flag", [True, False])
def test_all_same_flag_matches_reference(flag):
    rng = np.random.default_rng(7)
    qs, zp, queue, _ = _random_inputs(rng, 3, 8, 6, 12)
    positive = np.full((8, 3), flag)
    got = _call(qs, zp, queue, positive, 0.1).item()
    assert got == pytest.approx(numpy_rcl(qs, zp, queue, positive, 0.1), rel=1e-5)


@pytest.mark.parametrize("n,d,k,tau", [(4, 8, 16, 0.1), (10, 5, 3, 0.07), (3, 32, 64, 1.0)])
def test_single_criterion_all_positive_is_nnclr_info_nce(n, d, k, tau):
    torch.manual_seed(n + k)
    q, zp, queue = torch.randn(n, d), torch.randn(n, d), torch.randn(k, d)
    positive = torch.ones(n, 1, dtype=torch.bool)
    got = relative_contrastive_loss([q], zp, queue, positive, tau=tau)
    assert got.item() == pytest.approx(info_nce(q, zp, queue, temperature=tau).item(), rel=1e-5)


def test_identical_criteria_average_to_the_single_criterion_loss():
    torch.manual_seed(3)
    q, zp, queue = torch.randn(5, 4), torch.randn(5, 4), torch.randn(7, 4)
    pos = torch.tensor([True, False, True, False, True])
    one = relative_contrastive_loss([q], zp, queue, pos[:, None])
    three = relative_contrastive_loss([q, q, q], zp, queue, pos[:, None].repeat(1, 3))
    assert three.item() == pytest.approx(one.item(), rel=1e-6)


def test_negative_criterion_hand_computed():
    # q orthogonal to z' and to both queue rows: every logit is 0, denominator = 1 + K = 3.
    q = torch.tensor([[1.0, 0.0, 0.0]])
    zp = torch.tensor([[0.0, 2.0, 0.0]])
    queue = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -3.0]])
    neg = relative_contrastive_loss([q], zp, queue, torch.tensor([[False]]), tau=0.1)
    pos = relative_contrastive_loss([q], zp, queue, torch.tensor([[True]]), tau=0.1)
    assert neg.item() == pytest.approx(math.log(3.0), rel=1e-6)  # -log(1 / 3)
    assert pos.item() == pytest.approx(math.log(3.0), rel=1e-6)  # -log(e^0 / 3)
    # z' aligned with q: positive -> -log(e^10/(e^10+2)), negative -> log(e^10 + 2)
    zp2 = torch.tensor([[5.0, 0.0, 0.0]])
    pos2 = relative_contrastive_loss([q], zp2, queue, torch.tensor([[True]]), tau=0.1)
    neg2 = relative_contrastive_loss([q], zp2, queue, torch.tensor([[False]]), tau=0.1)
    assert pos2.item() == pytest.approx(math.log1p(2 * math.exp(-10.0)), abs=2e-6)  # float32 cancellation
    assert neg2.item() == pytest.approx(math.log(math.exp(10.0) + 2.0), rel=1e-6)


def test_inputs_are_l2_normalised_inside():
    torch.manual_seed(4)
    qs = [torch.randn(6, 5), torch.randn(6, 5)]
    zp, queue = torch.randn(6, 5), torch.randn(9, 5)
    positive = torch.rand(6, 2) < 0.5
    ref = relative_contrastive_loss(qs, zp, queue, positive)
    scaled = relative_contrastive_loss([3.0 * qs[0], 0.2 * qs[1]], 7.0 * zp, 0.5 * queue, positive)
    assert scaled.item() == pytest.approx(ref.item(), rel=1e-5)


def test_gradient_matches_eq4():
    # dL/dq_i for one query = alpha_i / N * J_norm(q_i) [(P(z'|q_i) - I_i) z' + sum_k P(s_k|q_i) s_k] / tau
    torch.manual_seed(5)
    n, d, k, h, tau = 4, 6, 5, 3, 0.1
    qs = [torch.randn(n, d, requires_grad=True) for _ in range(h)]
    zp, queue = torch.randn(n, d), torch.randn(k, d)
    positive = torch.tensor([[True, False, True], [False, False, True], [True, True, True], [False, True, False]])
    relative_contrastive_loss(qs, zp, queue, positive, tau=tau).backward()
    zn, sn = F.normalize(zp, dim=1), F.normalize(queue, dim=1)
    for i in range(h):
        for b in range(n):
            q = qs[i].detach()[b]
            qh = q / q.norm()
            logits = torch.cat([(qh @ zn[b])[None], sn @ qh]) / tau
            p = torch.softmax(logits, dim=0)
            g = ((p[0] - positive[b, i].float()) * zn[b] + (p[1:, None] * sn).sum(0)) / tau
            jac = (torch.eye(d) - torch.outer(qh, qh)) / q.norm()
            expected = jac @ g / (h * n)
            torch.testing.assert_close(qs[i].grad[b], expected, rtol=1e-4, atol=1e-6)


def _geometry(c: float, k: int, d: int = 6):
    """q = e0, z' at cosine c to q in the (e0, e1) plane, K queue rows orthogonal to both."""
    q = torch.zeros(1, d)
    q[0, 0] = 1.0
    zp = torch.zeros(1, d)
    zp[0, 0], zp[0, 1] = c, math.sqrt(1 - c * c)
    queue = torch.zeros(k, d)
    for j in range(k):
        queue[j, 2 + j % (d - 2)] = 1.0 if j % 2 == 0 else -1.0
    return q, zp, queue


def _cos_after_step(q0, zp, queue, positive, tau=0.1, lr=1e-3):
    q = q0.clone().requires_grad_(True)
    h = positive.shape[1]
    relative_contrastive_loss([q] * h, zp, queue, positive, tau=tau).backward()
    with torch.no_grad():
        before = F.cosine_similarity(q, zp).item()
        after = F.cosine_similarity(q - lr * q.grad, zp).item()
    return before, after


@pytest.mark.parametrize("c", [-0.5, 0.0, 0.3, 0.9])
def test_gradient_step_pulls_positive_pair_and_pushes_negative_pair(c):
    # Eq. 7-8 with one criterion: eta' = P(z'|q) - I < 0 pulls, > 0 pushes.
    q, zp, queue = _geometry(c, k=8)
    before, after_pos = _cos_after_step(q, zp, queue, torch.tensor([[True]]))
    assert after_pos > before
    before, after_neg = _cos_after_step(q, zp, queue, torch.tensor([[False]]))
    assert after_neg < before


def test_gradient_step_with_random_queue_and_nearby_key():
    # z' a near neighbour of q (high P(z'|q), as for a retrieved key) and a random queue: the
    # queue terms dropped in Eq. 7 do not change the direction here.
    torch.manual_seed(6)
    n, d = 16, 128
    q, queue = torch.randn(n, d), torch.randn(256, d)
    zp = q + 0.5 * torch.randn(n, d)
    for flag, sign in ((True, 1.0), (False, -1.0)):
        q_ = q.clone().requires_grad_(True)
        relative_contrastive_loss([q_], zp, queue, torch.full((n, 1), flag)).backward()
        with torch.no_grad():
            delta = F.cosine_similarity(q_ - 1e-2 * q_.grad, zp) - F.cosine_similarity(q_, zp)
        assert (sign * delta > 0).all()


def test_flipping_a_flag_changes_the_gradient_by_the_key_term_only():
    # Eq. 4: the indicator enters only through -I_i z'/tau, so positive minus negative flag
    # gives -J_norm(q) z' / (tau H N) and moves q towards z' for any queue.
    torch.manual_seed(9)
    n, d, h, tau = 8, 16, 2, 0.1
    q0, zp, queue = torch.randn(n, d), torch.randn(n, d), torch.randn(32, d)
    grads = {}
    for flag in (True, False):
        q = q0.clone().requires_grad_(True)
        other = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
        positive = torch.stack([torch.full((n,), flag), torch.tensor([True, False] * (n // 2))], dim=1)
        relative_contrastive_loss([q, other], zp, queue, positive, tau=tau).backward()
        grads[flag] = q.grad
    qh, zn = F.normalize(q0, dim=1), F.normalize(zp, dim=1)
    tangent = zn - (qh * zn).sum(1, keepdim=True) * qh
    expected = -tangent / q0.norm(dim=1, keepdim=True) / (tau * h * n)
    torch.testing.assert_close(grads[True] - grads[False], expected, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        cos_pos = F.cosine_similarity(q0 - 1e-2 * grads[True], zp)
        cos_neg = F.cosine_similarity(q0 - 1e-2 * grads[False], zp)
    assert (cos_pos > cos_neg).all()


@pytest.mark.parametrize(
    "p_model,flags,pulls",
    [
        (0.50, [True, True, False], True),  # Fig. 3 case (1): P_c = 2/3 > 0.5 -> pull
        (0.75, [True, True, False], False),  # case (2): P_c = 2/3 < 0.75 -> push apart
        (0.50, [False, False, False], False),  # case (3)-like: P_c = 0 -> push
        (0.05, [True, False, False], True),  # P_c = 1/3 > 0.05 -> pull
    ],
)
def test_multiple_criteria_direction_follows_eq9(p_model, flags, pulls):
    # Identical predictors (Eq. 9): eta' = H (P(z'|q) - P_c). With the queue orthogonal to q,
    # P(z'|q) = e^{c/t} / (e^{c/t} + K), so c = t log(K P / (1 - P)) sets P(z'|q) = p_model.
    k, tau = 4, 0.1
    c = tau * math.log(k * p_model / (1 - p_model))
    q, zp, queue = _geometry(c, k=k)
    before, after = _cos_after_step(q, zp, queue, torch.tensor([flags]), tau=tau)
    assert (after > before) == pulls


def test_float32_under_autocast_and_finite_at_low_temperature():
    torch.manual_seed(8)
    qs = [torch.randn(8, 16), torch.randn(8, 16)]
    zp, queue = torch.randn(8, 16), torch.randn(32, 16)
    positive = torch.rand(8, 2) < 0.5
    ref = relative_contrastive_loss(qs, zp, queue, positive)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = relative_contrastive_loss(qs, zp, queue, positive)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-6)
    half = relative_contrastive_loss([x.bfloat16() for x in qs], zp.bfloat16(), queue.bfloat16(), positive)
    assert half.dtype == torch.float32 and half.item() == pytest.approx(ref.item(), rel=2e-2)
    q = qs[0].clone().requires_grad_(True)
    low = relative_contrastive_loss([q, qs[1]], zp, queue, positive, tau=1e-3)
    low.backward()
    assert torch.isfinite(low) and torch.isfinite(q.grad).all()


def test_errors():
    q, zp, queue = torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(5, 3)
    pos = torch.ones(4, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="q must be a non-empty list"):
        relative_contrastive_loss([], zp, queue, pos[:, :0])
    with pytest.raises(ValueError, match="q must be a list"):
        relative_contrastive_loss(q, zp, queue, pos)
    with pytest.raises(ValueError, match=r"q\[1\]"):
        relative_contrastive_loss([q, torch.zeros(4, 2)], zp, queue, pos)
    with pytest.raises(ValueError, match=r"q\[1\]"):
        relative_contrastive_loss([q, torch.zeros(3, 3)], zp, queue, pos)
    with pytest.raises(ValueError, match="z_prime"):
        relative_contrastive_loss([q, q], torch.zeros(5, 3), queue, pos)
    with pytest.raises(ValueError, match="z_prime"):
        relative_contrastive_loss([q, q], torch.zeros(4, 2), queue, pos)
    with pytest.raises(ValueError, match="queue"):
        relative_contrastive_loss([q, q], zp, torch.zeros(5, 4), pos)
    with pytest.raises(ValueError, match="queue"):
        relative_contrastive_loss([q, q], zp, torch.zeros(5), pos)
    with pytest.raises(ValueError, match="positive must have shape"):
        relative_contrastive_loss([q, q], zp, queue, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive must have shape"):
        relative_contrastive_loss([q, q], zp, queue, torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="positive must be a bool"):
        relative_contrastive_loss([q, q], zp, queue, torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"q\[0\].*floating"):
        relative_contrastive_loss([torch.zeros(4, 3, dtype=torch.long)], zp, queue, pos[:, :1])
    with pytest.raises(ValueError, match=r"q\[0\]"):
        relative_contrastive_loss([torch.zeros(0, 3)], torch.zeros(0, 3), queue, pos[:0, :1])
    with pytest.raises(ValueError, match="tau"):
        relative_contrastive_loss([q, q], zp, queue, pos, tau=0.0)
