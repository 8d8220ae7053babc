"""Semi-supervised Relational Reasoning: explicit same-class positives against a loop-written reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relssl.methods.relational as relational_module
from relssl.errors import ConfigError
from relssl.losses import focal_bce, relational_pairs
from relssl.losses.relational_semi import semi_supervised_pairs, weighted_focal_bce
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

LABELS = [0, 0, 1, -1, 1, -1, 0, 2, 2, 0]  # four of class 0, two of 1, two of 2, two unlabelled
K = 3


def view_image_features(k: int, m: int) -> torch.Tensor:
    """Row v*M + n holds (v, n), so a `cat` pair reads (left view, left image, right view, right image)."""
    v, n = torch.meshgrid(torch.arange(k), torch.arange(m), indexing="ij")
    return torch.stack((v.reshape(-1), n.reshape(-1)), dim=1).float()


def decoded_pairs(labels: list[int], k: int, balance: str) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    z = view_image_features(k, len(labels))
    pairs, targets, weights = semi_supervised_pairs(z, k, torch.tensor(labels), "cat", balance)
    return [tuple(int(x) for x in p) for p in pairs.tolist()], targets.numpy(), weights.numpy()


def reference_positives(labels: list[int], k: int) -> Counter:
    """The documented rule, with loops: (i, n, j, n) and (i, a, j, b) for i < j, a != b labelled alike."""
    out: Counter = Counter()
    m = len(labels)
    for i in range(k):
        for j in range(i + 1, k):
            for a in range(m):
                for b in range(m):
                    if a == b or (labels[a] >= 0 and labels[a] == labels[b]):
                        out[(i, a, j, b)] += 1
    return out


def reference_negatives(labels: list[int], k: int, balance: str) -> Counter:
    """For pair c = (i, j) and anchor a: walk a - s_c, a - s_c - 1, ... and keep 1 + extra allowed partners."""
    out: Counter = Counter()
    m = len(labels)
    c = 0
    for i in range(k):
        for j in range(i + 1, k):
            shift = c % (m - 1) + 1
            for a in range(m):
                def allowed(b: int, a: int = a) -> bool:
                    return b != a and not (labels[a] >= 0 and labels[b] == labels[a])
                same = sum(1 for b in range(m) if b != a and labels[a] >= 0 and labels[b] == labels[a])
                dense = m if labels[a] >= 0 else 1
                want = {"weight": 1, "negatives": 1 + same, "dense": dense, "dense_per_anchor": dense}[balance]
                walk = [(a - shift - r) % m for r in range(m)]
                for b in [b for b in walk if allowed(b)][:want]:
                    out[(i, a, j, b)] += 1
            c += 1
    return out


@pytest.mark.parametrize("balance", ["weight", "negatives", "dense", "dense_per_anchor"])
def test_positives_are_every_promised_same_class_pair_and_nothing_else(balance):
    pairs, targets, _ = decoded_pairs(LABELS, K, balance)
    positives = Counter(p for p, t in zip(pairs, targets) if t == 1)
    assert positives == reference_positives(LABELS, K)  # every promised pair, each once
    unlabelled = {n for n, y in enumerate(LABELS) if y < 0}
    for i, a, j, b in positives:
        assert i < j
        if a != b:
            assert a not in unlabelled and b not in unlabelled and LABELS[a] == LABELS[b]
    # 3 augmentation pairs x (10 augmentation positives + 4*3 + 2 + 2 ordered same-class pairs)
    assert len(positives) == 3 * (10 + 16)


@pytest.mark.parametrize("balance", ["weight", "negatives", "dense", "dense_per_anchor"])
def test_negatives_follow_the_documented_walk_and_never_share_a_labelled_class(balance):
    pairs, targets, _ = decoded_pairs(LABELS, K, balance)
    negatives = Counter(p for p, t in zip(pairs, targets) if t == 0)
    assert negatives == reference_negatives(LABELS, K, balance)
    for _, a, _, b in negatives:
        assert a != b and not (LABELS[a] >= 0 and LABELS[a] == LABELS[b])
    n_pos = int(targets.sum())
    if balance == "weight":
        assert len(negatives) == 3 * len(LABELS)  # one per anchor and augmentation pair, as the paper
    elif balance == "negatives":
        assert sum(negatives.values()) == n_pos  # one more negative for each label positive
    else:  # a labelled anchor meets every image not of its class once per augmentation pair
        for y in set(LABELS) - {-1}:
            a = LABELS.index(y)
            partners = {b for (_, a2, _, b) in negatives if a2 == a}
            assert partners == {b for b in range(len(LABELS)) if LABELS[b] != y}
        assert sum(negatives.values()) == 3 * (2 + sum(sum(1 for z in LABELS if z != y) for y in LABELS if y >= 0))


def test_unlabelled_batch_gives_exactly_the_scheduled_pairs():
    labels = [-1] * 6
    pairs, targets, weights = decoded_pairs(labels, 4, "weight")
    z = view_image_features(4, 6)
    ref_pairs, ref_targets = relational_pairs(z, 4, "cat")
    assert Counter(zip(pairs, targets.tolist())) == Counter(
        zip([tuple(int(x) for x in p) for p in ref_pairs.tolist()], ref_targets.tolist()))
    np.testing.assert_allclose(weights, 1.0 / len(pairs), rtol=1e-6)


def test_negatives_are_capped_by_the_images_available():
    labels = [0, 0, 0, 0, 1]  # anchors of class 0 have one allowed partner only
    pairs, targets, weights = decoded_pairs(labels, 2, "negatives")
    negatives = [p for p, t in zip(pairs, targets) if t == 0]
    assert Counter(negatives) == reference_negatives(labels, 2, "negatives")
    assert sorted(negatives) == sorted([(0, a, 1, 4) for a in range(4)] + [(0, 4, 1, (4 - 1) % 5)])
    assert weights[targets == 0].sum() == pytest.approx(0.5) and weights[targets == 1].sum() == pytest.approx(0.5)


@pytest.mark.parametrize("balance", ["weight", "negatives", "dense", "dense_per_anchor"])
def test_positives_and_negatives_carry_equal_total_weight(balance):
    pairs, targets, weights = decoded_pairs(LABELS, K, balance)
    pos, neg = weights[targets == 1], weights[targets == 0]
    assert pos.sum() == pytest.approx(0.5, rel=1e-6) and neg.sum() == pytest.approx(0.5, rel=1e-6)
    np.testing.assert_allclose(pos, 0.5 / len(pos), rtol=1e-6)  # every positive weighs the same
    if balance != "dense_per_anchor":
        np.testing.assert_allclose(neg, 0.5 / len(neg), rtol=1e-6)
        return
    groups: dict[tuple[int, int], list[float]] = {}  # (augmentation pair's left view, anchor) -> weights
    for (i, a, j, _), t, w in zip(pairs, targets, weights):
        if t == 0:
            groups.setdefault((i * K + j, a), []).append(float(w))
    assert len(groups) == 3 * len(LABELS)  # every anchor has negatives for every augmentation pair
    for ws in groups.values():  # one anchor's share, split evenly
        assert sum(ws) == pytest.approx(0.5 / len(groups), rel=1e-6)
        np.testing.assert_allclose(ws, ws[0], rtol=1e-6)


def test_per_anchor_weighting_without_labels_is_the_unsupervised_mean():
    _, targets, weights = decoded_pairs([-1] * 6, 3, "dense_per_anchor")
    np.testing.assert_allclose(weights, 1.0 / len(weights), rtol=1e-6)


def reference_loss(z: torch.Tensor, labels: list[int], k: int, balance: str, gamma: float) -> torch.Tensor:
    """½ mean focal term over the reference positives + ½ over the reference negatives, dot-product logits."""
    m = len(labels)

    def terms(pairs: Counter, target: float) -> torch.Tensor:
        rows = [(i * m + a, j * m + b) for (i, a, j, b), count in pairs.items() for _ in range(count)]
        logits = torch.stack([z[left] @ z[right] for left, right in rows])
        y = torch.sigmoid(logits)
        p_wrong = (1 - y) if target == 1 else y
        log_p = F.logsigmoid(logits) if target == 1 else F.logsigmoid(-logits)
        return -0.5 * p_wrong**gamma * log_p

    negatives = reference_negatives(labels, k, balance)
    if balance != "dense_per_anchor":
        return 0.5 * terms(reference_positives(labels, k), 1.0).mean() + 0.5 * terms(negatives, 0.0).mean()
    by_anchor: dict[tuple[int, int, int], Counter] = {}  # mean within each (i, j, anchor), then over them
    for (i, a, j, b), count in negatives.items():
        by_anchor.setdefault((i, j, a), Counter())[(i, a, j, b)] += count
    anchor_means = torch.stack([terms(group, 0.0).mean() for group in by_anchor.values()])
    return 0.5 * terms(reference_positives(labels, k), 1.0).mean() + 0.5 * anchor_means.mean()


@pytest.mark.parametrize("balance", ["weight", "negatives", "dense", "dense_per_anchor"])
def test_weighted_loss_values_and_gradients_match_the_reference(balance):
    torch.manual_seed(0)
    z0 = torch.randn(K * len(LABELS), 5, dtype=torch.float64)
    z = z0.clone().requires_grad_()
    pairs, targets, weights = semi_supervised_pairs(z, K, torch.tensor(LABELS), "cat", balance)
    logits = (pairs[:, :5] * pairs[:, 5:]).sum(1)
    loss = weighted_focal_bce(logits, targets, weights, gamma=2.0)
    loss.backward()
    z_ref = z0.clone().requires_grad_()
    ref = reference_loss(z_ref, LABELS, K, balance, gamma=2.0)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(z.grad.float(), z_ref.grad.float(), rtol=1e-4, atol=1e-7)


def _method(**overrides) -> relational_module.RelationalReasoning:
    cfg = build_config({}, {"method": "relational", "relational.k": K, "relational.head_hidden": 16, **overrides})
    torch.manual_seed(0)
    method = build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=3)
    assert isinstance(method, relational_module.RelationalReasoning)
    return method


def test_no_labels_is_bitwise_the_unsupervised_step_on_either_path():
    torch.manual_seed(1)
    views = torch.randn(K * 8, 3, 16, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])  # would change pairs if they were used
    results = []
    for mode in ("explicit", "flip"):
        method = _method(**{"relational.label_positives": mode})
        torch.manual_seed(5)
        out = method.training_step(views, labels, torch.arange(8))
        out.loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in method.parameters() if p.grad is not None])
        results.append((out.loss.detach(), grads, torch.get_rng_state()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[0][2], results[1][2])  # no extra random draws
    # ... and equal to the paper's loss computed by hand from the scheduled pairs (plain focal mean)
    method = _method()
    with torch.no_grad():
        z = method.backbone(views)
        pairs, targets = relational_pairs(z, K, "cat")
        logits = method.head(pairs).float().reshape(-1)
        y = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        by_hand = (0.5 * ((1.0 - targets) * y + targets * (1.0 - y)).pow(2.0) * bce).mean()
        assert torch.equal(method.training_step(views, labels, torch.arange(8)).loss, by_hand)
        assert torch.equal(by_hand, focal_bce(logits, targets))


def test_explicit_step_uses_label_pairs_and_gradients_reach_the_backbone():
    method = _method(**{"relational.labelled_fraction": 0.5})
    flip = _method(**{"relational.labelled_fraction": 0.5, "relational.label_positives": "flip"})
    torch.manual_seed(2)
    views = torch.randn(K * 6, 3, 16, 16)
    labels = torch.tensor([0, 0, 1, -1, 1, 0])
    with torch.no_grad():
        z = method.backbone(views)
        logits, targets, weights = method.weighted_pair_logits(z, labels)
        flip_logits, flip_targets = flip.pair_logits(z, labels)
    # per augmentation pair: 6 augmentation positives + 6 ordered pairs of class 0 + 2 of class 1
    assert weights is not None and targets.sum() == K * (6 + 6 + 2)
    assert flip_targets.numel() == 6 * K * (K - 1)  # flip keeps the paper's pair count
    out = method.training_step(views, labels, torch.arange(6))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.parameters() if p.dim() > 1)


def test_global_pairs_form_same_class_pairs_across_ranks(monkeypatch):
    """`relational.pairs: global` with two simulated ranks: rank 1's loss equals one process on the global batch."""
    method = _method(**{"relational.labelled_fraction": 0.5, "relational.pairs": "global",
                        "relational.head": "dot"})
    method.backbone = nn.Identity()
    torch.manual_seed(3)
    m_rank = 4
    z_ranks = [torch.randn(K, m_rank, 6) for _ in range(2)]
    labels_ranks = [torch.tensor([0, 1, -1, 2]), torch.tensor([1, 0, 2, -1])]  # same classes only across ranks
    monkeypatch.setattr(relational_module, "world_size", lambda: 2)
    monkeypatch.setattr(relational_module, "gather_with_grad",
                        lambda t: torch.cat((z_ranks[0].reshape(-1, 6), t)))
    monkeypatch.setattr(relational_module, "gather_no_grad", lambda t: torch.cat((labels_ranks[0], t)))
    local = z_ranks[1].reshape(-1, 6)
    loss = method.training_step(local, labels_ranks[1], torch.arange(m_rank)).loss
    global_z = torch.cat(z_ranks, dim=1).reshape(-1, 6)  # view-major over the 8 images
    global_labels = torch.cat(labels_ranks)
    logits, targets, weights = method.weighted_pair_logits(global_z, global_labels)
    assert weights is not None
    assert loss.item() == pytest.approx(weighted_focal_bce(logits, targets, weights).item(), rel=1e-6)
    # classes 0, 1 and 2 each have one labelled image per rank: 3 cross-rank pairs, both orders
    assert targets.sum() == K * (8 + 6)
    local_only = method.weighted_pair_logits(local, labels_ranks[1])[1]
    assert local_only.sum() == K * 4  # on one rank alone there would be no label positives


def test_config_rejects_a_balance_without_explicit_positives():
    with pytest.raises(ConfigError, match="label_balance"):
        build_config({}, {"relational.label_positives": "flip", "relational.label_balance": "negatives"})
    with pytest.raises(ConfigError, match="label_positives"):
        build_config({}, {"relational.label_positives": "both"})


def test_label_pair_gradients_are_bitwise_reproducible():
    torch.manual_seed(0)
    z0 = torch.randn(8 * 64, 32)
    labels = torch.arange(64) % 10
    weight = torch.randn(64)
    grads = []
    for _ in range(4):
        z = z0.clone().requires_grad_()
        pairs, targets, weights = semi_supervised_pairs(z, 8, labels, "cat", "negatives")
        weighted_focal_bce(pairs @ weight, targets, weights).backward()
        grads.append(z.grad)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_semi_supervised_grid_runs_four_label_fractions_with_three_seeds(tmp_path):
    from relssl.benchmark import load_grid, plan_cells

    grid_file = Path(__file__).resolve().parents[1] / "configs" / "benchmarks" / "semi_supervised.yaml"
    grid = load_grid(grid_file, "smoke", {"RELSSL_CIFAR10": str(tmp_path)})
    configs = {pc.cell.run_name: pc.config for pc in plan_cells(grid, tmp_path / "out")}
    fractions = {"l0": 0.0, "l10": 0.1, "l50": 0.5, "l100": 1.0}
    assert set(configs) == {f"{label}_relational-seed{s}" for label in fractions for s in range(3)}
    for run, cfg in configs.items():
        assert cfg is not None
        assert cfg.relational.labelled_fraction == fractions[run.split("_")[0]], run
        assert cfg.relational.label_positives == "explicit" and cfg.relational.k == 4
        assert cfg.train.max_steps == 2000 and cfg.seed == int(run[-1])


def reference_label_term_pairs(labels: list[int], k: int) -> tuple[Counter, Counter]:
    """`label_term`'s label pairs by loops: (i, a, j, b) for i < j and every ordered pair a != b of labelled images."""
    positives: Counter = Counter()
    negatives: Counter = Counter()
    m = len(labels)
    for i in range(k):
        for j in range(i + 1, k):
            for a in range(m):
                for b in range(m):
                    if a != b and labels[a] >= 0 and labels[b] >= 0:
                        (positives if labels[a] == labels[b] else negatives)[(i, a, j, b)] += 1
    return positives, negatives


def split_label_term(labels: list[int], k: int, label_weight: float = 0.5) -> dict[str, list]:
    """The pairs (with their weights) of the two terms, in the documented order: unsupervised first, then labels."""
    z = view_image_features(k, len(labels))
    pairs, targets, weights = semi_supervised_pairs(z, k, torch.tensor(labels), "cat", "label_term", label_weight)
    rows = [tuple(int(x) for x in p) for p in pairs.tolist()]
    n_unsup = 2 * (k * (k - 1) // 2) * len(labels)  # one positive and one walk negative per anchor and pair
    parts: dict[str, list] = {"aug_pos": [], "walk_neg": [], "label_pos": [], "label_neg": []}
    for n, (row, t, w) in enumerate(zip(rows, targets.tolist(), weights.tolist())):
        part = ("aug_pos" if t == 1 else "walk_neg") if n < n_unsup else ("label_pos" if t == 1 else "label_neg")
        parts[part].append((row, w))
    return parts


def test_label_term_pairs_every_labelled_pair_and_keeps_the_unsupervised_pairs():
    parts = split_label_term(LABELS, K)
    m = len(LABELS)
    assert Counter(row for row, _ in parts["aug_pos"]) == Counter(
        (i, n, j, n) for i in range(K) for j in range(i + 1, K) for n in range(m))
    assert Counter(row for row, _ in parts["walk_neg"]) == reference_negatives(LABELS, K, "weight")
    positives, negatives = reference_label_term_pairs(LABELS, K)
    assert Counter(row for row, _ in parts["label_pos"]) == positives
    assert Counter(row for row, _ in parts["label_neg"]) == negatives
    unlabelled = {n for n, y in enumerate(LABELS) if y < 0}
    # an unlabelled image (perhaps of the anchor's class) is never a label negative
    assert not any(a in unlabelled or b in unlabelled for (_, a, _, b), _ in parts["label_neg"])
    assert len(parts["label_pos"]) == 3 * 16 and len(parts["label_neg"]) == 3 * (8 * 7 - 16)


@pytest.mark.parametrize("label_weight", [0.5, 0.2])
def test_label_term_weights_split_the_loss_between_the_two_terms(label_weight):
    parts = split_label_term(LABELS, K, label_weight)
    shares = {name: sum(w for _, w in rows) for name, rows in parts.items()}
    assert shares["aug_pos"] == pytest.approx((1 - label_weight) / 2, rel=1e-6)
    assert shares["walk_neg"] == pytest.approx((1 - label_weight) / 2, rel=1e-6)
    assert shares["label_pos"] == pytest.approx(label_weight / 2, rel=1e-6)
    assert shares["label_neg"] == pytest.approx(label_weight / 2, rel=1e-6)
    for rows in parts.values():  # evenly within each part
        np.testing.assert_allclose([w for _, w in rows], rows[0][1], rtol=1e-6)


def test_label_term_without_labels_is_the_unsupervised_mean_and_empty_parts_drop_out():
    parts = split_label_term([-1] * 6, 3)
    assert not parts["label_pos"] and not parts["label_neg"]
    weights = [w for rows in parts.values() for _, w in rows]
    np.testing.assert_allclose(weights, 1.0 / len(weights), rtol=1e-6)
    assert Counter(row for row, _ in parts["walk_neg"]) == reference_negatives([-1] * 6, 3, "weight")
    # labelled images of different classes only: no label positive, so the label negatives keep lambda/2
    parts = split_label_term([0, 1, 2, -1, -1], 2, 0.5)
    assert not parts["label_pos"] and len(parts["label_neg"]) == 6
    total = 0.25 + 0.25 + 0.25
    assert sum(w for _, w in parts["label_neg"]) == pytest.approx(0.25 / total, rel=1e-6)
    assert sum(w for _, w in parts["aug_pos"]) == pytest.approx(0.25 / total, rel=1e-6)


def test_label_term_loss_values_and_gradients_match_the_paper_terms_by_hand():
    torch.manual_seed(0)
    z0 = torch.randn(K * len(LABELS), 5, dtype=torch.float64)
    z = z0.clone().requires_grad_()
    pairs, targets, weights = semi_supervised_pairs(z, K, torch.tensor(LABELS), "cat", "label_term", 0.3)
    loss = weighted_focal_bce((pairs[:, :5] * pairs[:, 5:]).sum(1), targets, weights, gamma=2.0)
    loss.backward()
    z_ref = z0.clone().requires_grad_()
    m = len(LABELS)

    def mean_term(rows: Counter, target: float) -> torch.Tensor:
        logits = torch.stack([z_ref[i * m + a] @ z_ref[j * m + b] for (i, a, j, b), c in rows.items() for _ in range(c)])
        p_wrong = 1 - torch.sigmoid(logits) if target == 1 else torch.sigmoid(logits)
        log_p = F.logsigmoid(logits) if target == 1 else F.logsigmoid(-logits)
        return (-0.5 * p_wrong**2 * log_p).mean()  # relssl's focal term carries the factor 1/2 (Eq. 7-8)

    aug = Counter((i, n, j, n) for i in range(K) for j in range(i + 1, K) for n in range(m))
    label_pos, label_neg = reference_label_term_pairs(LABELS, K)
    ref = 0.7 * (0.5 * mean_term(aug, 1.0) + 0.5 * mean_term(reference_negatives(LABELS, K, "weight"), 0.0)) \
        + 0.3 * (0.5 * mean_term(label_pos, 1.0) + 0.5 * mean_term(label_neg, 0.0))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)  # the weights are float32
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-5, atol=1e-9)


def test_label_term_step_trains_and_label_weight_is_validated():
    method = _method(**{"relational.labelled_fraction": 0.5, "relational.label_balance": "label_term",
                        "relational.label_weight": 0.4})
    torch.manual_seed(2)
    views = torch.randn(K * 6, 3, 16, 16)
    out = method.training_step(views, torch.tensor([0, 0, 1, -1, 1, 0]), torch.arange(6))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters() if p.dim() > 1)
    with pytest.raises(ConfigError, match="label_weight applies to label_balance 'label_term' only"):
        build_config({}, {"relational.label_balance": "negatives", "relational.label_weight": 0.3})
    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="label_weight"):
            build_config({}, {"relational.label_balance": "label_term", "relational.label_weight": bad})
