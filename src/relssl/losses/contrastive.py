"""Contrastive losses of the InfoNCE family: SimCLR's NT-Xent and a single-positive InfoNCE.

NT-Xent is Eq. 1 of Chen et al. (2020), "A Simple Framework for Contrastive Learning of
Visual Representations"; InfoNCE is Eq. 4 of van den Oord et al. (2018) in the form used by
MoCo (He et al., 2020, Eq. 1). Both compute in float32 with autocast disabled and use
`logsumexp`, so they stay finite for small temperatures and under mixed precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NT_XENT_FORMS = ("standard", "mean_log")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")


def nt_xent_log_probs(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Log-probability of the positive for each of the 2N anchors, SimCLR Eq. 1 inside the log.

    Row r of z = [z1; z2] (rows L2-normalised here) is an anchor; its positive is the other view
    of the same image (r + N mod 2N) and the denominator sums exp(sim / t) over the 2N - 1 rows
    other than r, so the 2N - 2 rows of other images act as negatives. Returns (2N,) float32.
    """
    _check_temperature(temperature)
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (N, d) with the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    if n < 1:
        raise ValueError("nt_xent needs at least one image (N >= 1)")
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat((z1, z2), dim=0).float(), dim=1)
        logits = (z @ z.t()) / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        rows = torch.arange(2 * n, device=z.device)
        positive = logits[rows, (rows + n) % (2 * n)]
        return positive - torch.logsumexp(logits, dim=1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, form: str = "standard") -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al., 2020, Eq. 1) over the 2N views of N images.

    `z1`, `z2` (N, d) are the two views' projections, row n of each from image n; they are
    L2-normalised here, so similarities are cosines. With p_r = exp(s(r, r+)/t) / sum_{k != r}
    exp(s(r, k)/t) for anchor r and its other view r+:

    - ``form="standard"``: L = mean_r -log p_r, SimCLR's loss averaged over the 2N anchors.
    - ``form="mean_log"``: L = -log(mean_r p_r), the variant in the Relational Reasoning
      reference code (`methods/simclr.py`, `return_loss_fn`, after pietz/simclr), whose authors
      report it slightly better (77% vs 76% CIFAR-10). Its p_r is exactly the one above (the
      positive's exp over the column sum minus the self term exp(1/t)); only where the log is
      taken differs. By Jensen, mean_log <= standard, with equality when all p_r are equal.
    """
    if form not in NT_XENT_FORMS:
        raise ValueError(f"form must be one of {', '.join(NT_XENT_FORMS)}; got {form!r}")
    log_p = nt_xent_log_probs(z1, z2, temperature)
    if form == "standard":
        return -log_p.mean()
    return math.log(log_p.numel()) - torch.logsumexp(log_p, dim=0)


def info_nce(
    q: torch.Tensor,
    k_pos: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
) -> torch.Tensor:
    """InfoNCE with one positive and explicit negatives (van den Oord et al., 2018; MoCo Eq. 1).

    L = mean_b -log [exp(q_b.k_b/t) / (exp(q_b.k_b/t) + sum_m exp(q_b.n_m/t))] for queries `q`
    (B, d) and positives `k_pos` (B, d). `negatives` is (M, d) shared by every query (a MoCo
    queue, an NNCLR support set) or (B, M, d) per query. With `normalize` all vectors are
    L2-normalised first (dot products become cosines), as MoCo and NNCLR do.
    """
    _check_temperature(temperature)
    if q.dim() != 2 or q.shape != k_pos.shape:
        raise ValueError(
            f"q and k_pos must both be (B, d) with the same shape; got {tuple(q.shape)} and {tuple(k_pos.shape)}"
        )
    b, d = q.shape
    if negatives.dim() == 2:
        if negatives.shape[1] != d:
            raise ValueError(f"negatives must be (M, {d}) or (B, M, {d}); got {tuple(negatives.shape)}")
    elif negatives.dim() == 3:
        if negatives.shape[0] != b or negatives.shape[2] != d:
            raise ValueError(f"negatives must be (M, {d}) or ({b}, M, {d}); got {tuple(negatives.shape)}")
    else:
        raise ValueError(f"negatives must be (M, d) or (B, M, d); got {tuple(negatives.shape)}")
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k_pos, negatives = q.float(), k_pos.float(), negatives.float()
        if normalize:
            q, k_pos, negatives = (F.normalize(t, dim=-1) for t in (q, k_pos, negatives))
        positive = (q * k_pos).sum(dim=1, keepdim=True)  # (B, 1)
        if negatives.dim() == 2:
            negative = q @ negatives.t()  # (B, M)
        else:
            negative = torch.einsum("bd,bmd->bm", q, negatives)
        logits = torch.cat((positive, negative), dim=1) / temperature
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def cross_view_nce(q: torch.Tensor, keys: torch.Tensor, temperature: float = 0.2, offset: int = 0) -> torch.Tensor:
    """In-batch InfoNCE: query b's positive is ``keys[offset + b]``, every other key row a negative.

    L = mean_b -log softmax(q_b . keys^T / t)[offset + b] on L2-normalised vectors; this is the
    loss of MoCo v3 (keys from the momentum encoder, gathered over ranks, `offset` = rank * B) and
    of NNCLR (keys = nearest neighbours of the other view's embedding).
    """
    _check_temperature(temperature)
    if q.dim() != 2 or keys.dim() != 2 or q.shape[1] != keys.shape[1]:
        raise ValueError(f"q (B, d) and keys (K, d) must share d; got {tuple(q.shape)} and {tuple(keys.shape)}")
    if offset < 0 or offset + q.shape[0] > keys.shape[0]:
        raise ValueError(f"offset {offset} + batch {q.shape[0]} exceeds the {keys.shape[0]} key rows")
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, keys = F.normalize(q.float(), dim=1), F.normalize(keys.float(), dim=1)
        logits = q @ keys.t() / temperature
        targets = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(logits, targets)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-mean_b cos(p_b, z_b) with `z` detached: the SimSiam loss; BYOL's 2 - 2 cos is 2 + 2 x this."""
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(f"p and z must both be (B, d) with the same shape; got {tuple(p.shape)} and {tuple(z.shape)}")
    with torch.autocast(device_type=p.device.type, enabled=False):
        return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()
