"""Relative Contrastive Loss (RCL) of Tang et al. (ECCV 2022), Eq. 2-3.

One InfoNCE-style term per semantic criterion M_i; the criterion's positive indicator decides
whether the key z' sits in the numerator (a positive) or only in the denominator (a negative).
Computed in float32 with autocast disabled and with `logsumexp`, like `losses.contrastive`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_features(name: str, t: object, d: int | None = None, n: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D; got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} must have {n} rows (N, matching q); got shape {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise ValueError(f"{name} must have feature dimension {d} (matching q); got shape {tuple(t.shape)}")
    return t


def relative_contrastive_loss(
    q: Sequence[torch.Tensor],
    z_prime: torch.Tensor,
    queue: torch.Tensor,
    positive: torch.Tensor,
    tau: float = 0.1,
) -> torch.Tensor:
    r"""Relative contrastive loss, Tang et al. (2022) Eq. 2-3, averaged over the N queries.

    For query n, criterion i (of H) with prediction q_i = ``q[i][n]``, key z' = ``z_prime[n]``,
    support-queue rows s_1..s_K = ``queue`` and indicator I_i = ``positive[n, i]``
    (I[Y_i(z) = Y_i(z')], "z and z' share a label under criterion M_i"):

        L_i = -log [ (I_i * exp(q_i.z'/tau) + (1 - I_i))
                     / (exp(q_i.z'/tau) + sum_k exp(q_i.s_k/tau)) ]          (Eq. 3)
        L_RCL = sum_i alpha_i L_i,  alpha_i = 1/H                            (Eq. 2)

    and the result is mean_n L_RCL. So when I_i = 1 the term is MoCo/NNCLR InfoNCE (Eq. 1) with
    z' the positive; when I_i = 0 the numerator is the constant 1 (= exp(0), exactly as Eq. 3
    writes it) and L_i = logsumexp([q_i.z', q_i.s_1, ..., q_i.s_K] / tau): z' is pushed away
    together with the queue. Its gradient in q_i is Eq. 4, (P(z'|q_i) - I_i) z'/tau +
    sum_k P(s_k|q_i) s_k/tau. A negative-criterion term is not bounded below by 0.

    Every vector (each ``q[i]``, ``z_prime``, ``queue``) is L2-normalised here, so q.z' is a
    cosine, as in MoCo v3 / NNCLR with tau = 0.1 (the paper does not say; this is our choice).
    The queue enters only the denominator, as K negatives shared by all N queries and all H
    criteria; it is used as given (if z' was retrieved from it, z' also appears among the s_k,
    as in Eq. 3 taken literally). Nothing is detached: pass momentum-encoder keys and the queue
    without grad, as the method does.

    Args:
        q: H >= 1 tensors (N, d), the criterion-specific predictions q_{M_1..M_H}.
        z_prime: (N, d) keys z'.
        queue: (K, d) support queue S (K may be 0).
        positive: bool (N, H), ``positive[n, i]`` = Y_i(z_n) == Y_i(z'_n).
        tau: temperature, > 0 (paper: 0.1).

    Returns:
        A float32 scalar.
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0; got {tau}")
    if isinstance(q, torch.Tensor) or not isinstance(q, Sequence):
        raise ValueError(f"q must be a list of H tensors (N, d); got {type(q).__name__}")
    if len(q) == 0:
        raise ValueError("q must be a non-empty list of H >= 1 tensors (N, d); got an empty list")
    q0 = _check_features("q[0]", q[0])
    n, d = q0.shape
    if n < 1:
        raise ValueError(f"q[0] must have at least one row (N >= 1); got shape {tuple(q0.shape)}")
    for i, qi in enumerate(q[1:], start=1):
        _check_features(f"q[{i}]", qi, d=d, n=n)
    _check_features("z_prime", z_prime, d=d, n=n)
    _check_features("queue", queue, d=d)
    h = len(q)
    if not isinstance(positive, torch.Tensor) or positive.dtype != torch.bool:
        got = positive.dtype if isinstance(positive, torch.Tensor) else type(positive).__name__
        raise ValueError(f"positive must be a bool tensor (N, H); got {got}")
    if tuple(positive.shape) != (n, h):
        raise ValueError(f"positive must have shape (N, H) = ({n}, {h}); got {tuple(positive.shape)}")

    with torch.autocast(device_type=q0.device.type, enabled=False):
        keys = F.normalize(z_prime.float(), dim=1)
        negatives = F.normalize(queue.float(), dim=1)
        positive = positive.to(keys.device)
        total = keys.new_zeros(())
        for i, qi in enumerate(q):
            qi = F.normalize(qi.float(), dim=1)
            key_logit = (qi * keys).sum(dim=1, keepdim=True) / tau  # (N, 1)
            logits = torch.cat((key_logit, qi @ negatives.t() / tau), dim=1)  # (N, 1 + K)
            # log numerator of Eq. 3: q_i.z'/tau when positive, log 1 = 0 when negative
            log_num = torch.where(positive[:, i], key_logit[:, 0], torch.zeros_like(key_logit[:, 0]))
            total = total + (torch.logsumexp(logits, dim=1) - log_num).mean()
        return total / h
