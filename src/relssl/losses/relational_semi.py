"""Semi-supervised Relational Reasoning pairs: explicit same-class positives (paper 1, §3.1).

"If a certain amount of data is labeled, positive pairs include representations of different
augmented inputs belonging to the same category." For each augmentation pair c = (i, j), i < j
in row-major order (the schedule of the augmentation positives), the pairs are

* augmentation positives: (view i of n, view j of n) for every image n;
* label positives: (view i of a, view j of b) for every ordered pair a != b of labelled images
  of one class (label >= 0), so each unordered same-class pair {a, b} gives both (a^i, b^j)
  and (b^i, a^j); same-view pairs (a^i, b^i) are not formed, as for augmentation positives;
* negatives: each anchor a takes the first `1 + e_a` images of the walk (a - s_c), (a - s_c - 1),
  ... (mod M) that are neither a nor labelled with a's class, with s_c the reference shift of
  `negative_shifts`; e_a = 0 for balance `weight`, e_a = the number of a's label partners for
  balance `negatives`, and for balance `dense` every allowed image when a is labelled (e_a = 0
  when it is not), as for `dense_per_anchor`; always capped by the images available. Without labels this is exactly the
  scheduled negative (view i of n, view j of (n - s_c) mod M) under every balance.

Unlabelled images (label -1) take part in augmentation positives and negatives only. The loss
weights give positives and negatives equal total weight: every positive has weight 1/(2 P+) and
every negative 1/(2 P-), so the weighted mean is ½ (mean over positives) + ½ (mean over negatives),
which without labels is the paper's plain mean. `dense_per_anchor` weighs negatives per anchor
instead: each (augmentation pair, anchor) holding negatives gets 1/(2 G) of the weight (G such
groups), split evenly among its negatives.

`label_term` keeps the two tasks apart. The unsupervised term is the `weight` balance's pairs
without label positives (augmentation positives and one walk negative per anchor, which never shares
a labelled class). The label term pairs every ordered pair a != b of labelled images, for every
augmentation pair: same class gives a label positive, a different class a label negative. The label
term has share `label_weight` (lambda) of the loss and the unsupervised term 1 - lambda. Each term
splits its share half to positives and half to negatives, evenly within each half. A part without
pairs (a batch with no same-class labelled pair) drops out, and the weights are renormalised to sum
to 1. Unlabelled images never enter the label term, so an unlabelled image of the anchor's own class
is never made its label negative.
"""

from __future__ import annotations

from typing import Literal

import torch

from relssl.losses.relational import aggregate, check_aggregation, focal_bce_terms

LABEL_BALANCES = ("weight", "negatives", "dense", "dense_per_anchor", "label_term")
Balance = Literal["weight", "negatives", "dense", "dense_per_anchor", "label_term"]


def _augmentation_views(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left view i and right view j of every augmentation pair c = (i, j), i < j, row-major."""
    i, j = torch.triu_indices(k, k, offset=1, device=device)
    return i, j


def _schedule(m: int, k: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Views i and j of every augmentation pair c, c itself, its reference shift s_c, and the M image indices."""
    vi, vj = _augmentation_views(k, device)
    c_all = torch.arange(vi.shape[0], device=device)
    return vi, vj, c_all, (c_all % (m - 1)) + 1, torch.arange(m, device=device)


def same_class_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors a and partners b of every ordered pair a != b of labelled images sharing a class (row-major)."""
    labelled = labels >= 0
    same = (labels[:, None] == labels[None, :]) & labelled[:, None]
    same.fill_diagonal_(False)
    anchors, partners = same.nonzero(as_tuple=True)
    return anchors, partners


def labelled_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchor, partner and same-class flag of every ordered pair a != b of labelled images (row-major)."""
    labelled = labels >= 0
    both = labelled[:, None] & labelled[None, :]
    both.fill_diagonal_(False)
    anchors, partners = both.nonzero(as_tuple=True)
    return anchors, partners, labels[anchors] == labels[partners]


def negative_partners(labels: torch.Tensor, shifts: torch.Tensor, extra: torch.Tensor,
                      extra_negatives: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augmentation pair, anchor and partner of every negative, ordered by pair c, then rank u, then anchor.

    Anchor a's allowed partners, in walk order (a-1, a-2, ... mod M), are the images other than a
    not labelled with a's class; for pair c the walk starts at (a - s_c) and takes 1 + extra[a] of them.
    `extra_negatives=False` promises `extra` is all zero, so no host sync sizes the result.
    """
    m = labels.shape[0]
    device = labels.device
    a = torch.arange(m, device=device)
    walk = (a[:, None] - 1 - torch.arange(m - 1, device=device)[None, :]) % m  # (M, M-1), never a
    labelled = labels >= 0
    allowed = ~(labelled[:, None] & (labels[walk] == labels[:, None]))
    available = allowed.sum(dim=1)  # n_a
    before = torch.cumsum(allowed, dim=1) - allowed.long()  # allowed partners earlier in the walk
    start = before[:, shifts - 1].T  # (C, M): rank of the first allowed partner at or after a - s_c
    order = torch.sort((~allowed).to(torch.uint8), dim=1, stable=True).indices
    ordered = walk.gather(1, order)  # allowed partners first, in walk order
    count = torch.minimum(1 + extra, available)
    # one negative per anchor unless extra ones are asked for: then the longest list sets the width (a host sync)
    width = int(count.max().item()) if extra_negatives and m else min(m, 1)
    u = torch.arange(width, device=device)
    valid = (u[:, None] < count[None, :]).expand(shifts.shape[0], -1, -1)  # (C, U, M)
    rank = (start[:, None, :] + u[None, :, None]) % available.clamp(min=1)[None, None, :]
    partner = ordered[a[None, None, :].expand_as(rank), rank]
    c = torch.arange(shifts.shape[0], device=device)[:, None, None].expand_as(rank)
    return c[valid], a.expand_as(rank)[valid], partner[valid]


def label_term_pair_index(labels: torch.Tensor, k: int, label_weight: float) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of z, targets and weights of the `label_term` balance (module docstring).

    Order: augmentation positives (c, n), walk negatives (c, a), then the label term's pairs (c, a, b)
    in row-major order of the ordered labelled pairs, positives and negatives interleaved.
    """
    if not 0.0 < label_weight < 1.0:
        raise ValueError(f"label_weight must lie strictly between 0 and 1; got {label_weight}")
    m, device = labels.shape[0], labels.device
    vi, vj, c_all, shifts, images = _schedule(m, k, device)
    n_aug = vi.shape[0]
    neg_c, neg_a, neg_b = negative_partners(labels, shifts, torch.zeros_like(images), extra_negatives=False)
    anchors, partners, same = labelled_pairs(labels)
    n_label = anchors.shape[0]
    c = torch.cat((c_all.repeat_interleave(m), neg_c, c_all.repeat_interleave(n_label)))
    left = torch.cat((images.repeat(n_aug), neg_a, anchors.repeat(n_aug)))
    right = torch.cat((images.repeat(n_aug), neg_b, partners.repeat(n_aug)))
    label_targets = same.repeat(n_aug).to(torch.float32)
    n_unsup = n_aug * m
    targets = torch.cat((torch.ones(n_unsup, device=device), torch.zeros(neg_c.shape[0], device=device),
                         label_targets))
    n_pos = same.sum() * n_aug  # label positives; a tensor, so no further host sync
    n_neg = n_aug * n_label - n_pos
    pos_w = torch.where(n_pos > 0, 0.5 * label_weight / n_pos.clamp(min=1), 0.0)
    neg_w = torch.where(n_neg > 0, 0.5 * label_weight / n_neg.clamp(min=1), 0.0)
    weights = torch.cat((torch.full((n_unsup,), 0.5 * (1 - label_weight) / n_unsup, device=device),
                         torch.full((neg_c.shape[0],), 0.5 * (1 - label_weight) / neg_c.shape[0], device=device),
                         torch.where(label_targets > 0, pos_w, neg_w)))
    return vi[c] * m + left, vj[c] * m + right, targets, weights / weights.sum()


def semi_supervised_pair_index(labels: torch.Tensor, k: int, balance: Balance = "weight",
                               label_weight: float = 0.5) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of z (view-major, K*M) of the left and right member of every pair, targets and loss weights.

    Order: augmentation positives (c, n), label positives (c, a, b), negatives (c, u, a); `label_term`
    has its own order (`label_term_pair_index`). `label_weight` is used by `label_term` only.
    """
    if balance not in LABEL_BALANCES:
        raise ValueError(f"balance must be one of {', '.join(LABEL_BALANCES)}; got {balance!r}")
    if balance == "label_term":
        return label_term_pair_index(labels, k, label_weight)
    m, device = labels.shape[0], labels.device
    vi, vj, c_all, shifts, images = _schedule(m, k, device)
    n_aug = vi.shape[0]
    anchors, partners = same_class_pairs(labels)
    n_same = anchors.shape[0]
    if balance == "negatives":  # one more negative per label positive
        extra = torch.bincount(anchors, minlength=m)
    elif balance in ("dense", "dense_per_anchor"):  # a labelled anchor takes every allowed image (capped)
        extra = torch.where(labels >= 0, m, 0)
    else:
        extra = torch.zeros_like(images)
    neg_c, neg_a, neg_b = negative_partners(labels, shifts, extra, extra_negatives=balance != "weight")
    c = torch.cat((c_all.repeat_interleave(m), c_all.repeat_interleave(n_same), neg_c))
    left = torch.cat((images.repeat(n_aug), anchors.repeat(n_aug), neg_a))
    right = torch.cat((images.repeat(n_aug), partners.repeat(n_aug), neg_b))
    n_pos = n_aug * (m + n_same)
    targets = torch.zeros(c.shape[0], device=device)
    targets[:n_pos] = 1.0
    n_neg = c.shape[0] - n_pos
    pos_weight = 1.0 / n_pos if n_neg == 0 else 0.5 / n_pos
    neg_weight: float | torch.Tensor = 0.5 / n_neg if n_neg else 0.0
    if balance == "dense_per_anchor" and n_neg:
        # each (augmentation pair, anchor) with negatives holds an equal share of the negative half,
        # split evenly among its negatives: unlabelled anchors keep the weight they have without labels
        group = neg_c * m + neg_a
        per_group = torch.bincount(group, minlength=n_aug * m)
        groups = (per_group > 0).sum()
        neg_weight = torch.cat((torch.zeros(n_pos, device=device), 0.5 / (groups * per_group[group])))
    weights = torch.where(targets > 0, pos_weight, neg_weight)
    return vi[c] * m + left, vj[c] * m + right, targets, weights


def semi_supervised_pairs(
    z: torch.Tensor,
    k: int,
    labels: torch.Tensor,
    aggregation: str = "cat",
    balance: Balance = "weight",
    label_weight: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Aggregated pairs, targets and loss weights (summing to 1) from K view-major views of M images.

    The members are gathered with `index_select`, whose backward (`index_add_`) accumulates a
    repeated row serially on CPU, so a seeded run reproduces exactly.
    """
    check_aggregation(aggregation)
    if z.dim() != 2 or k < 2 or z.shape[0] % k != 0:
        raise ValueError(f"z must be (K*M, d) with K >= 2; got shape {tuple(z.shape)} and K={k}")
    m = z.shape[0] // k
    if m < 2:
        raise ValueError(f"need at least 2 images per batch to build negatives; got M={m}")
    if labels.shape != (m,):
        raise ValueError(f"labels must have shape (M,)=({m},); got {tuple(labels.shape)}")
    left, right, targets, weights = semi_supervised_pair_index(labels.to(z.device).long(), k, balance,
                                                                label_weight)
    pairs = aggregate(z.index_select(0, left), z.index_select(0, right), aggregation)
    return pairs, targets.to(z.dtype), weights


def weighted_focal_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal binary cross-entropy of Eq. 7-8 as a weighted mean over pairs: sum w_i L_i / sum w_i."""
    terms = focal_bce_terms(logits, targets, gamma)
    weights = weights.reshape(-1).to(terms.dtype)
    if weights.shape != terms.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and logits {tuple(terms.shape)} differ in size")
    return (weights * terms).sum() / weights.sum()
