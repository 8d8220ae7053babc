"""RCL (Tang et al., ECCV 2022, §4): the warm-up and relative losses against independent NumPy computations,
positives from the clustering through the queue's dataset indices, H predictors, the queue and the online
hierarchy, gradients, the offline criteria ablations, checkpoints, two gloo ranks, and a digits run end to end."""

import csv
import functools
import json
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
from pydantic import ValidationError

from gloo_spawn import run_ranks
from relssl.augment import to_normalized
from relssl.cluster import OnlineHierarchy, dbscan_levels, kmeans_levels
from relssl.errors import ConfigError
from relssl.losses import relative_contrastive_loss
from relssl.methods import EpochContext
from relssl.methods.rcl import RCL, RCLConfig
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

N = 40  # images in the (fake) training split
M = 8  # images per batch
D = 8  # projector output
TAU = 0.2
RADII = [0.04, 0.1, 0.3]  # fit the keys of the structured images below under the seed-0 network
SMALL = {"rcl.projector_hidden": [16], "rcl.projector_dim": D, "rcl.predictor_hidden": 12, "rcl.queue_size": 64,
         "rcl.momentum": 0.9, "rcl.temperature": TAU, "rcl.radii": RADII, "rcl.warmup_epochs": 1}
NORMALIZE = functools.partial(to_normalized, mean=(0.5,) * 3, std=(0.25,) * 3)
HAND_LABELS = np.stack([np.arange(N), np.arange(N) // 2, np.arange(N) // 4, np.arange(N) // 20], axis=1)


# Two cores shared with benchmarks: intra-op threads oversubscribe them (a 3 s run takes 100 s).
pytestmark = pytest.mark.usefixtures("one_thread")


def _method(seed=0, **overrides):
    cfg = build_config({}, {"method": "rcl", **SMALL, **overrides})
    torch.manual_seed(seed)
    return build_method(cfg, create_backbone("conv4"), num_images=N, num_classes=5)


def _images(group=None, seed=0):
    """uint8 (N, 16, 16, 3): four random prototypes plus a little noise; image i shows prototype group[i]."""
    group = np.arange(N) % 4 if group is None else np.asarray(group)
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, size=(4, 16, 16, 3))
    return np.clip(protos[group] + rng.normal(0, 5, size=(N, 16, 16, 3)), 0, 255).astype(np.uint8)


def _context(method, epoch, images=None):
    return EpochContext(epoch=epoch, images=_images() if images is None else images, normalize=NORMALIZE,
                        device=torch.device("cpu"), seed=0, optimizer=torch.optim.SGD(method.parameters(), lr=0.1))


def _views(seed, close=False):
    """2M random views; with `close`, view 2 is view 1 plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    v1 = torch.randn(M, 3, 16, 16, generator=g)
    v2 = v1 + 0.05 * torch.randn(M, 3, 16, 16, generator=g) if close else torch.randn(M, 3, 16, 16, generator=g)
    return torch.cat([v1, v2])


def _indices(step):
    return torch.from_numpy(np.random.default_rng(100 + step).permutation(N)[:M])


def _step(method, seed, indices=None, close=False):
    indices = _indices(seed) if indices is None else indices
    return method.training_step(_views(seed, close), torch.full((M,), -1), indices)


def _set_hand_labels(method, labels=HAND_LABELS):
    method.set_level_labels(torch.from_numpy(labels))


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np(t):
    return t.detach().double().numpy()


def _logsumexp(x):
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _np_rcl(qs, z_prime, bank, positive, tau):
    """Eq. 2-3 in NumPy: mean_i mean_n -log[(I exp(q.z'/tau) + (1 - I)) / (exp(q.z'/tau) + sum_k exp(q.s_k/tau))]."""
    zp = _unit(z_prime)
    bank = _unit(bank) if len(bank) else np.zeros((0, zp.shape[1]))
    total = 0.0
    for i, q in enumerate(qs):
        q = _unit(q)
        key = (q * zp).sum(axis=1) / tau
        logits = np.concatenate([key[:, None], q @ bank.T / tau], axis=1)
        total += np.mean(_logsumexp(logits) - np.where(positive[:, i], key, 0.0))
    return total / len(qs)


def _reference(method, views, indices, columns):
    """One step recomputed from the state before it: (loss, positive_rate, [(z', positive) per direction]).

    Direction a: predictions of view 1 with the key of view 2; direction b the reverse. Clustered with a
    non-empty queue: z' = the queue row of largest cosine with the key (brute force), positive[n, c] =
    labels[query image, c] == labels[image of that row, c]. Otherwise z' = the key itself, all positive.
    """
    v1, v2 = views.chunk(2)
    with torch.no_grad():
        z1, z2 = method.project(v1), method.project(v2)
        k1, k2 = _np(method.target(v1)), _np(method.target(v2))
        q1, q2 = ([_np(p(z)) for p in method.predictors] for z in (z1, z2))
    h = len(columns)
    q1, q2 = (q * h if len(q) == 1 else q for q in (q1, q2))
    bank, bank_idx = _np(method.queue.features()), method.queue.sample_indices().numpy()
    labels, idx = method.level_labels.numpy(), np.asarray(indices)
    terms, rates, used = [], [], []
    for qs, key in ((q1, k2), (q2, k1)):
        if bool(method.clustered) and len(bank):
            rows = (_unit(key) @ bank.T).argmax(axis=1)
            zp, pos = bank[rows], labels[idx][:, columns] == labels[bank_idx[rows]][:, columns]
        else:
            zp, pos = key, np.ones((len(idx), h), dtype=bool)
        terms.append(_np_rcl(qs, zp, bank, pos, method.temperature))
        rates.append(pos.mean())
        used.append((zp, pos))
    return float(np.mean(terms)), 50.0 * sum(rates), used


def _nested(labels):
    """Cluster preserve property: same label at level h => same label at every level above."""
    labels = np.asarray(labels)
    for h in range(labels.shape[1] - 1):
        same = labels[:, h][:, None] == labels[:, h][None, :]
        same_above = labels[:, h + 1][:, None] == labels[:, h + 1][None, :]
        if (same & ~same_above).any():
            return False
    return True


def _same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :]))


# ----------------------------------------------------------------------------- warm-up: Eq. 1


@pytest.mark.parametrize("case", ["before_warmup_epoch", "never_clustered"])
def test_warmup_loss_is_eq1_with_the_own_key_and_every_criterion_positive(case):
    if case == "before_warmup_epoch":
        method = _method(**{"rcl.warmup_epochs": 3})
        method.on_epoch_start(_context(method, 2))  # epoch 2 < 3: nothing clusters
    else:
        method = _method(**{"rcl.warmup_epochs": 0})  # clustering due, but on_epoch_start never ran
    assert not bool(method.clustered) and method.hierarchy is None
    columns = [1, 2, 3]

    # empty queue: z' is the key, nothing else in the denominator, so every term is log(e^x / e^x) = 0
    views = _views(1)
    ref, rate, _ = _reference(method, views, _indices(1), columns)
    out = method.training_step(views, torch.full((M,), -1), _indices(1))
    assert ref == pytest.approx(0.0, abs=1e-12)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)
    assert out.metrics["positive_rate"].item() == 100.0 == rate

    # a queue of M keys: InfoNCE with the image's own key from the other view as the positive
    for seed in (2, 3):
        views = _views(seed)
        ref, rate, used = _reference(method, views, _indices(seed), columns)
        bank = method.queue.features().clone()
        out = method.training_step(views, torch.full((M,), -1), _indices(seed))
        assert len(bank) == M * (seed - 1)
        assert out.loss.item() > 0.1 and out.loss.item() == pytest.approx(ref, rel=1e-5)
        assert out.metrics["positive_rate"].item() == 100.0 == rate
        # the library's Eq. 2-3 with the same tensors gives the same number
        v1, v2 = views.chunk(2)
        with torch.no_grad():
            q1, q2 = ([p(method.project(v)) for p in method.predictors] for v in (v1, v2))
            k1, k2 = method.target(v1), method.target(v2)
        all_true = torch.ones(M, 3, dtype=torch.bool)
        lib = (relative_contrastive_loss(q1, k2, bank, all_true, tau=TAU)
               + relative_contrastive_loss(q2, k1, bank, all_true, tau=TAU)) / 2
        assert out.loss.item() == pytest.approx(lib.item(), rel=1e-5)
        # with every criterion negative it would differ: the comparison can fail
        none = torch.zeros(M, 3, dtype=torch.bool)
        neg = (relative_contrastive_loss(q1, k2, bank, none, tau=TAU)
               + relative_contrastive_loss(q2, k1, bank, none, tau=TAU)) / 2
        assert abs(neg.item() - out.loss.item()) > 1e-2
    assert out.metrics["clusters_top"].item() == N  # unclustered: every image its own cluster


# ----------------------------------------------------------------------------- after clustering: Eq. 2-3


def test_positives_come_from_the_labels_of_the_nearest_queue_rows_image():
    method = _method()
    for seed in (1, 2, 3):  # warm-up steps fill the queue with 24 keys
        _step(method, seed)
    _set_hand_labels(method)  # fixed labels, no hierarchy: the step cannot move them
    views, indices = _views(4), _indices(4)
    bank, bank_idx = _np(method.queue.features()), method.queue.sample_indices().numpy().copy()
    ref, rate, used = _reference(method, views, indices, [1, 2, 3])
    out = method.training_step(views, torch.full((M,), -1), indices)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    assert out.metrics["positive_rate"].item() == pytest.approx(rate, abs=1e-4)
    assert 0.0 < rate < 100.0  # some (query, z', criterion) triples are positive, some negative

    # the same positives by hand, per criterion column c: i // 2, i // 4, i // 20
    v1, v2 = views.chunk(2)
    with torch.no_grad():
        k1, k2 = _np(method.target(v1)), _np(method.target(v2))
    for key, (zp, pos) in zip((k2, k1), used):
        rows = [int(np.argmax([_unit(k) @ _unit(s) for s in bank])) for k in key]
        np.testing.assert_allclose(zp, bank[rows], atol=0)
        for n, row in enumerate(rows):
            a, b = int(indices[n]), int(bank_idx[row])
            assert pos[n].tolist() == [a // 2 == b // 2, a // 4 == b // 4, a // 20 == b // 20]
    # all-positive (the warm-up) would give another loss
    assert abs(out.loss.item() - _np_rcl_all_positive(method, views, bank, used)) > 1e-3
    assert out.metrics["clusters_top"].item() == 2  # i // 20


def _np_rcl_all_positive(method, views, bank, used):
    v1, v2 = views.chunk(2)
    with torch.no_grad():
        q1, q2 = ([_np(p(method.project(v))) for p in method.predictors] for v in (v1, v2))
    return float(np.mean([_np_rcl(q, zp, bank, np.ones_like(pos), TAU) for q, (zp, pos) in zip((q1, q2), used)]))


def test_instance_criterion_adds_column_zero_same_image_in_the_queue():
    method = _method(**{"rcl.instance_criterion": True})
    assert method.criteria_columns == [0, 1, 2, 3] and len(method.predictors) == 4
    indices = _indices(1)
    _step(method, 1, indices, close=True)  # the queue holds these images' view-1 keys
    _set_hand_labels(method)
    views = _views(1, close=True)  # the same images again: each key's nearest row is mostly its own image
    ref, rate, used = _reference(method, views, indices, [0, 1, 2, 3])
    out = method.training_step(views, torch.full((M,), -1), indices)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    assert out.metrics["positive_rate"].item() == pytest.approx(rate, abs=1e-4)
    bank_idx = method.queue.sample_indices().numpy()[:M]
    for zp, pos in used:
        same_image = np.array([int(bank_idx[np.argmax(_unit(method.queue.features()[:M].numpy()) @ _unit(z))])
                               for z in zp]) == indices.numpy()
        assert pos[:, 0].tolist() == same_image.tolist()
        assert pos[:, 0].any()
        assert (pos[:, 0] <= pos[:, 1]).all()  # the hand labels nest: instance-positive => positive above


def test_online_hierarchy_initialises_from_the_key_encoders_eval_keys_after_the_warmup():
    method = _method()
    images = _images()
    method.on_epoch_start(_context(method, 0, images))  # epoch 0 < warmup_epochs = 1
    assert method.hierarchy is None and not bool(method.clustered)
    assert torch.equal(method.level_labels, torch.arange(N).unsqueeze(1).repeat(1, 4))

    method.on_epoch_start(_context(method, 1, images))
    assert bool(method.clustered) and isinstance(method.hierarchy, OnlineHierarchy)
    target = method.target.target
    target.eval()
    with torch.no_grad():
        keys = _unit(_np(target(NORMALIZE(torch.from_numpy(images)))))
    target.train()
    np.testing.assert_allclose(_np(method.hierarchy.bank), keys, atol=1e-6)
    labels = method.level_labels.numpy()
    assert np.array_equal(labels, method.hierarchy.labels.numpy())
    assert np.array_equal(labels, dbscan_levels(torch.from_numpy(keys).float(), RADII, 4)[0].numpy())
    assert _same_partition(labels[:, 1], np.arange(N) % 4)  # the finest radius finds the four prototypes
    assert np.array_equal(labels[:, 0], np.arange(N)) and _nested(labels)

    hierarchy = method.hierarchy  # online: built once, not rebuilt at later epochs
    method.on_epoch_start(_context(method, 2, _images(np.arange(N) // 10)))
    assert method.hierarchy is hierarchy and np.array_equal(method.level_labels.numpy(), labels)


def test_loss_after_online_clustering_uses_the_labels_from_before_the_steps_update():
    method = _method()
    method.on_epoch_start(_context(method, 1))
    for seed in (1, 2):
        _step(method, seed)
    changed = False
    for seed in (3, 4, 5):
        views, indices = _views(seed), _indices(seed)
        before = method.level_labels.clone()
        ref, rate, _ = _reference(method, views, indices, [1, 2, 3])
        out = method.training_step(views, torch.full((M,), -1), indices)
        assert out.loss.item() == pytest.approx(ref, rel=1e-5)
        assert out.metrics["positive_rate"].item() == pytest.approx(rate, abs=1e-4)
        assert out.metrics["clusters_top"].item() == len(np.unique(method.level_labels[:, -1].numpy()))
        changed |= not torch.equal(before, method.level_labels)
    assert changed  # the refinement moved labels, so "before" vs "after" matters here


# ----------------------------------------------------------------------------- H predictors


def test_one_predictor_per_criterion_by_default_or_one_shared():
    assert len(_method().predictors) == 3  # H = len(radii)
    assert len(_method(**{"rcl.radii": [0.5, 0.9]}).predictors) == 2
    assert len(_method(**{"rcl.num_predictors": 3}).predictors) == 3

    shared = _method(**{"rcl.num_predictors": 1})
    assert len(shared.predictors) == 1 and shared.num_criteria == 3
    _step(shared, 1)
    _set_hand_labels(shared)
    views, indices = _views(2), _indices(2)
    ref, rate, _ = _reference(shared, views, indices, [1, 2, 3])  # q_i = P(z) for every i
    out = shared.training_step(views, torch.full((M,), -1), indices)
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    assert out.metrics["positive_rate"].item() == pytest.approx(rate, abs=1e-4)


@pytest.mark.parametrize("overrides,h,bad", [({}, 3, 2), ({}, 3, 4), ({"rcl.instance_criterion": True}, 4, 3),
                                             ({"rcl.radii": [0.5]}, 1, 2)])
def test_num_predictors_must_be_one_or_h(overrides, h, bad):
    with pytest.raises(ValueError, match=rf"rcl\.num_predictors must be 1 \(shared\) or H={h} .*got {bad}"):
        _method(**overrides, **{"rcl.num_predictors": bad})
    with pytest.raises(ConfigError, match=r"rcl\.num_predictors"):
        build_config({}, {"method": "rcl", "rcl.num_predictors": 0})


def test_instance_criterion_adds_one_criterion():
    plain, with_instance = _method(), _method(**{"rcl.instance_criterion": True})
    assert plain.criteria_columns == [1, 2, 3] and with_instance.criteria_columns == [0, 1, 2, 3]
    assert (plain.num_criteria, with_instance.num_criteria) == (3, 4)
    assert len(_method(**{"rcl.instance_criterion": True, "rcl.num_predictors": 1}).predictors) == 1


# ----------------------------------------------------------------------------- queue and online labels


def test_queue_grows_by_the_batch_and_keeps_view_one_keys_and_dataset_indices():
    method = _method()
    seen = []
    for seed in (1, 2, 3):
        indices = _indices(seed)
        _step(method, seed, indices)
        seen += indices.tolist()
        assert len(method.queue) == len(seen) and method.queue.sample_indices().tolist() == seen
        with torch.no_grad():
            k1 = method.target(_views(seed)[:M])
        np.testing.assert_allclose(_np(method.queue.features()[-M:]), _unit(_np(k1)), atol=1e-6)
    for seed in range(4, 12):
        _step(method, seed)
    assert len(method.queue) == 64  # capped at queue_size


def test_online_update_writes_view_one_keys_and_labels_stay_nested():
    method = _method()
    method.on_epoch_start(_context(method, 1))
    for seed in (1, 2, 3, 4):
        indices = _indices(seed)
        _step(method, seed, indices)
        labels = method.level_labels.numpy()
        assert np.array_equal(labels, method.hierarchy.labels.numpy())
        assert np.array_equal(labels[:, 0], np.arange(N)) and _nested(labels)
        with torch.no_grad():
            k1 = method.target(_views(seed)[:M])
        np.testing.assert_allclose(_np(method.hierarchy.bank[indices]), _unit(_np(k1)), atol=1e-6)
    assert not _same_partition(method.level_labels[:, 1].numpy(), np.arange(N) % 4)  # refined away from init


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("clustered", [False, True])
def test_gradients_reach_every_predictor_and_never_the_ema_target(clustered):
    method = _method()
    for seed in (1, 2):
        _step(method, seed)
    if clustered:
        _set_hand_labels(method)
    method.zero_grad(set_to_none=True)
    views, indices = _views(3), _indices(3)
    _, _, used = _reference(method, views, indices, [1, 2, 3])
    bank = method.queue.features().clone()
    out = method.training_step(views, torch.full((M,), -1), indices)
    out.loss.backward()

    target_params = list(method.target.parameters())
    assert len(target_params) == len(list(method.backbone.parameters())) + len(list(method.projector.parameters()))
    for p in target_params:
        assert p.grad is None and not p.requires_grad
    for predictor in method.predictors:
        for p in predictor.parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.backbone.parameters())

    # the predictors' gradients are those of Eq. 2-3 with the reference's z' and positives
    got = [p.grad.clone() for p in method.predictors.parameters()]
    v1, v2 = views.chunk(2)
    q1, q2 = ([p(method.project(v)) for p in method.predictors] for v in (v1, v2))
    (zp_a, pos_a), (zp_b, pos_b) = used
    ref = (relative_contrastive_loss(q1, torch.from_numpy(zp_a).float(), bank, torch.from_numpy(pos_a), tau=TAU)
           + relative_contrastive_loss(q2, torch.from_numpy(zp_b).float(), bank, torch.from_numpy(pos_b), tau=TAU)) / 2
    expected = torch.autograd.grad(ref, list(method.predictors.parameters()))
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    if clustered:
        assert not (pos_a.all() and pos_b.all())


# ----------------------------------------------------------------------------- offline criteria (Table 4)


@pytest.mark.parametrize("criteria", ["kmeans", "dbscan"])
def test_offline_criteria_recluster_all_keys_at_every_epoch_start_after_the_warmup(criteria):
    extra = {"rcl.kmeans_clusters": [8, 4]} if criteria == "kmeans" else {}
    method = _method(**{"rcl.criteria": criteria, "rcl.warmup_epochs": 2, **extra})
    assert method.num_levels == (3 if criteria == "kmeans" else 4)
    method.on_epoch_start(_context(method, 1))
    assert not bool(method.clustered)
    coarse = 2 if criteria == "kmeans" else 1  # kmeans: 4 clusters; dbscan: the finest radius
    previous = None
    for epoch, group in ((2, np.arange(N) % 4), (3, np.arange(N) // 10)):
        images = _images(group)
        method.on_epoch_start(_context(method, epoch, images))
        assert bool(method.clustered) and method.hierarchy is None
        target = method.target.target
        target.eval()
        with torch.no_grad():
            keys = target(NORMALIZE(torch.from_numpy(images)))
        target.train()
        if criteria == "kmeans":
            expected = kmeans_levels(keys, [8, 4], seed=0 * 1000 + epoch)[0]
            assert all(len(np.unique(method.level_labels[:, h].numpy())) == k for h, k in ((1, 8), (2, 4)))
        else:
            expected = dbscan_levels(keys, RADII, 4)[0]
        labels = method.level_labels.numpy()
        assert np.array_equal(labels, expected.numpy())
        assert np.array_equal(labels[:, 0], np.arange(N)) and _nested(labels)
        assert _same_partition(labels[:, coarse], group)  # the labels follow this epoch's features
        if previous is not None:
            assert not np.array_equal(labels, previous)
        previous = labels.copy()
        _step(method, epoch)  # offline labels stay fixed during the epoch
        assert np.array_equal(method.level_labels.numpy(), previous)


@pytest.mark.parametrize("overrides,key", [
    ({"rcl.criteria": "kmeans"}, r"rcl\.kmeans_clusters"),
    ({"rcl.criteria": "kmeans", "rcl.kmeans_clusters": [4, 8]}, r"rcl\.kmeans_clusters"),
    ({"rcl.criteria": "kmeans", "rcl.kmeans_clusters": [8, 1]}, r"rcl\.kmeans_clusters"),
    ({"rcl.radii": [0.8, 0.7, 0.6]}, r"rcl\.radii must increase from the finest level .*pass \(0\.6, 0\.7, 0\.8\)"),
    ({"rcl.radii": [0.0, 0.7]}, r"rcl\.radii"),
    ({"rcl.radii": [0.6, 0.6]}, r"rcl\.radii must increase"),
    ({"rcl.radii": [0.5, 2.5]}, r"rcl\.radii must lie in \(0, 2\]"),
    ({"rcl.criteria": "dbscan", "rcl.radii": [0.6, 0.6]}, r"rcl\.radii"),
    ({"rcl.criteria": "kmeans", "rcl.kmeans_clusters": [8, 8]}, r"rcl\.kmeans_clusters .*strictly decreasing"),
    ({"rcl.criteria": "spectral"}, r"rcl\.criteria"),
])
def test_bad_criteria_settings_are_config_errors_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_config({}, {"method": "rcl", **overrides})


@pytest.mark.parametrize("overrides,message", [
    ({"rcl.criteria": "kmeans", "rcl.kmeans_clusters": [80, 8]}, r"rcl\.kmeans_clusters .*not exceed the 40 training"),
    ({"rcl.hierarchy_options": {"merge_treshold": 0.5}}, r"config key 'rcl\.hierarchy_options': .*'merge_treshold'"),
    ({"rcl.hierarchy_options": {"merge_threshold": 1.5}}, r"config key 'rcl\.hierarchy_options': merge_threshold must be"),
])
def test_bad_levels_fail_at_start_up_not_after_the_warmup(overrides, message):
    """These depend on the dataset (checked when the method is built) or on OnlineHierarchy's options
    (checked with the config); before they failed only when clustering began, naming no key."""
    with pytest.raises(ConfigError, match=message):
        cfg = build_config({}, {"method": "rcl", **SMALL, **overrides})
        build_method(cfg, create_backbone("conv4"), num_images=N, num_classes=5)


def test_good_levels_build_for_every_criteria_source():
    for overrides in ({"rcl.criteria": "kmeans", "rcl.kmeans_clusters": [40, 8], "rcl.radii": [0.9, 2.0]},
                      {"rcl.criteria": "dbscan", "rcl.radii": [0.5, 2.0]},
                      {"rcl.hierarchy_options": {"merge_threshold": 0.9, "split_scale": 2.0}}):
        _method(**overrides)  # kmeans ignores the radii; 2.0 is the largest unit-sphere distance


def test_config_rejects_an_unknown_criteria_source_and_empty_levels():
    with pytest.raises(ValidationError, match="'online', 'kmeans' or 'dbscan'"):
        RCLConfig(criteria="x")
    with pytest.raises(ValidationError, match=r"rcl\.kmeans_clusters must list >= 2 clusters per level"):
        RCLConfig(criteria="kmeans")
    RCL(create_backbone("conv4"), RCLConfig(criteria="kmeans", kmeans_clusters=[8, 2]), num_images=N)


# ----------------------------------------------------------------------------- checkpoints


def test_state_dict_round_trips_through_weights_only_load_with_the_hierarchy(tmp_path):
    method = _method()
    method.on_epoch_start(_context(method, 1))
    for seed in (1, 2, 3):
        _step(method, seed)
    torch.save(method.state_dict(), tmp_path / "rcl.pt")
    state = torch.load(tmp_path / "rcl.pt", weights_only=True)

    fresh = _method(seed=1)  # other initial weights, no hierarchy yet
    assert fresh.hierarchy is None
    fresh.load_state_dict(state)
    assert fresh.hierarchy is not None and fresh.hierarchy is not method.hierarchy
    assert torch.equal(fresh.level_labels, method.level_labels) and bool(fresh.clustered)
    assert torch.equal(fresh.hierarchy.labels, method.hierarchy.labels)
    for key, value in method.hierarchy.state_dict().items():
        assert torch.equal(fresh.hierarchy.state_dict()[key], value), key
    assert torch.equal(fresh.queue.features(), method.queue.features())
    assert torch.equal(fresh.queue.sample_indices(), method.queue.sample_indices())

    untouched = _method(seed=1)
    for seed in (4, 5, 6):
        a, b, c = _step(method, seed), _step(fresh, seed), _step(untouched, seed)
        assert a.loss.item() == b.loss.item() and torch.equal(a.metrics["positive_rate"], b.metrics["positive_rate"])
        assert abs(a.loss.item() - c.loss.item()) > 1e-4  # loading mattered
        assert torch.equal(fresh.level_labels, method.level_labels)
        assert torch.equal(fresh.hierarchy.labels, method.hierarchy.labels)
        assert torch.equal(fresh.queue.keys, method.queue.keys)
        assert torch.equal(fresh.queue.indices, method.queue.indices)


def test_loading_a_warmup_checkpoint_clears_the_hierarchy(tmp_path):
    warm = _method()
    _step(warm, 1)
    torch.save(warm.state_dict(), tmp_path / "warm.pt")
    clustered = _method()
    clustered.on_epoch_start(_context(clustered, 1))
    assert clustered.hierarchy is not None
    clustered.load_state_dict(torch.load(tmp_path / "warm.pt", weights_only=True))
    assert clustered.hierarchy is None and not bool(clustered.clustered)
    # and it continues exactly like the run it came from: no stale clustering overwrites the labels
    a, b = _step(warm, 2), _step(clustered, 2)
    assert a.loss.item() == b.loss.item()
    assert torch.equal(clustered.level_labels, warm.level_labels)


# ----------------------------------------------------------------------------- two gloo ranks

WORLD, B, STEPS = 2, 4, 3


def _rank_batch(rank, step, images):
    """This rank's local batch at `step`: different images and views on every rank."""
    indices = torch.from_numpy(np.random.default_rng(7).permutation(N)[(step * WORLD + rank) * B:][:B])
    g = torch.Generator().manual_seed(1000 * rank + step)
    x = NORMALIZE(torch.from_numpy(images[indices.numpy()]))
    views = torch.cat([x + 0.1 * torch.randn(x.shape, generator=g), x + 0.1 * torch.randn(x.shape, generator=g)])
    return views, indices


def _gloo_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        images = _images()
        method = _method()  # same initial weights on both ranks, as DDP guarantees
        method.on_epoch_start(_context(method, 1, images))  # the same keys, so the same initial hierarchy
        res = {"initial": method.hierarchy.state_dict(), "labels": [], "queue_keys": [], "queue_indices": [],
               "losses": [], "local_indices": []}
        for step in range(STEPS):
            views, indices = _rank_batch(rank, step, images)
            out = method.training_step(views, torch.full((B,), -1), indices)
            res["losses"].append(out.loss.item())
            res["local_indices"].append(indices.clone())
            res["labels"].append(method.level_labels.clone())
            res["queue_keys"].append(method.queue.features().clone())
            res["queue_indices"].append(method.queue.sample_indices().clone())
        torch.save(res, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_results(tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this PyTorch build")
    tmp = tmp_path_factory.mktemp("rcl_gloo")
    return run_ranks(_gloo_worker, tmp, WORLD)


def test_cluster_labels_and_queue_are_identical_on_every_rank_after_every_step(gloo_results):
    a, b = gloo_results
    for key, value in a["initial"].items():
        assert torch.equal(value, b["initial"][key]), key
    for step in range(STEPS):
        assert not torch.equal(a["local_indices"][step], b["local_indices"][step])
        assert torch.equal(a["labels"][step], b["labels"][step]), step
        assert torch.equal(a["queue_keys"][step], b["queue_keys"][step]), step
        # rank order: every step appends rank 0's B indices, then rank 1's
        expected = torch.cat([res["local_indices"][s] for s in range(step + 1) for res in gloo_results])
        assert torch.equal(a["queue_indices"][step], expected) and torch.equal(b["queue_indices"][step], expected)
        assert _nested(a["labels"][step].numpy())
    assert a["losses"] != b["losses"]  # different local batches


def test_every_rank_refines_the_hierarchy_with_both_ranks_keys(gloo_results):
    """Replaying the update with the gathered keys (the queue's new rows) gives the ranks' labels;
    replaying only rank 0's own keys does not."""
    a = gloo_results[0]
    both, own = (OnlineHierarchy(N, 4, radii=RADII, min_samples=4) for _ in range(2))
    both.load_state_dict(a["initial"])
    own.load_state_dict(a["initial"])
    differs = False
    for step in range(STEPS):
        rows = slice(step * WORLD * B, (step + 1) * WORLD * B)
        keys, indices = a["queue_keys"][step][rows], a["queue_indices"][step][rows]
        both.update(indices, keys)
        own.update(indices[:B], keys[:B])
        assert torch.equal(both.labels, a["labels"][step]), step
        differs |= not torch.equal(own.labels, a["labels"][step])
    assert differs


# ----------------------------------------------------------------------------- end to end


def test_rcl_trains_on_digits_end_to_end_with_a_warmup_epoch(tmp_path):
    from relssl.train.run import run_training

    cfg = build_config({}, {
        "method": "rcl", "rcl.projector_hidden": [32], "rcl.projector_dim": 16, "rcl.predictor_hidden": 32,
        "rcl.queue_size": 256, "rcl.warmup_epochs": 1, "train.epochs": 3, "train.batch_size": 64,
        "train.device": "cpu", "train.progress": False, "train.runs_dir": str(tmp_path), "train.run_name": "rcl",
        "eval.epochs": 2, "eval.compare_random": False,
    })
    run_dir, metrics = run_training(cfg, log=lambda *args: None)
    assert metrics["finished"] and metrics["train_epochs_completed"] == 3
    assert 0.0 <= metrics["linear_top1"] <= 100.0
    assert json.loads((run_dir / "metrics.json").read_text())["linear_top1"] == metrics["linear_top1"]
    rows = list(csv.DictReader((run_dir / "train_log.csv").open()))
    assert {"loss", "positive_rate", "clusters_top"} <= set(rows[0])
    rate = {e: [float(r["positive_rate"]) for r in rows if int(r["epoch"]) == e] for e in range(3)}
    assert len(rate[0]) == metrics["train_steps"] // 3 > 0
    assert all(v == 100.0 for v in rate[0])  # warm-up: Eq. 1
    for e in (1, 2):  # clustered: some retrieved neighbours are negatives under some criterion
        assert np.mean(rate[e]) < 100.0 and min(rate[e]) < 100.0
    assert all(float(r["clusters_top"]) == 1347 for r in rows if int(r["epoch"]) == 0)
