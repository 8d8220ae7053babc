"""OnlineHierarchy (RCL §4.3), density-peak splitting and the offline DBSCAN / k-means label banks."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relssl.cluster import OnlineHierarchy, dbscan_levels, enforce_hierarchy, kmeans_levels
from relssl.cluster.density_peak import assign_to_prototypes
from relssl.cluster.tree import quantize as _quantize

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny inputs: threads cost far more than the arithmetic


def blobs(centres: torch.Tensor, per: int, noise: float, seed: int = 0) -> torch.Tensor:
    """`per` samples around each unit centre, on the sphere, grouped by centre."""
    g = torch.Generator().manual_seed(seed)
    d = centres.shape[1]
    x = centres.repeat_interleave(per, 0) + noise / d**0.5 * torch.randn(len(centres) * per, d, generator=g)
    return F.normalize(x, dim=1)


def orthogonal_centres(k: int, d: int) -> torch.Tensor:
    return torch.eye(d)[:k]


def check_invariants(oh: OnlineHierarchy) -> None:
    """Shapes, instance column, no lost sample, nesting at every pair of levels, exact bookkeeping."""
    n, num_levels = oh.num_samples, oh.num_levels
    labels = oh.labels
    assert labels.shape == (n, num_levels) and labels.dtype == torch.long
    assert torch.equal(labels[:, 0], torch.arange(n))
    assert bool((labels >= 0).all()) and bool((labels < n).all())
    for h in range(1, num_levels):
        for j in range(h + 1, num_levels):  # same cluster at h => same cluster at j
            pairs = torch.unique(labels[:, h] * n + labels[:, j])
            assert torch.unique(pairs // n).numel() == pairs.numel(), f"level {h} cluster split across level {j}"
    assert torch.equal(oh.labels_of(torch.arange(n)), labels)
    if oh.bank is None:
        return
    q = _quantize(oh.bank)
    for h in range(1, num_levels):
        assert torch.equal(oh._counts[h - 1], torch.bincount(labels[:, h], minlength=n))
        assert torch.equal(oh._sums[h - 1], torch.zeros_like(oh._sums[h - 1]).index_add_(0, labels[:, h], q))
        inactive = oh._counts[h - 1] == 0
        if h < num_levels - 1:
            assert bool((oh._parent[h][inactive] == -1).all())
        assert bool((oh._stale[h - 1][inactive] == 0).all())
    assert oh.num_clusters == (n,) + tuple(int(torch.unique(labels[:, h]).numel()) for h in range(1, num_levels))


# ---------------------------------------------------------------- warm-up and offline banks


def test_initialize_three_separated_blobs_gives_three_coarse_clusters():
    x = blobs(orthogonal_centres(3, 16), per=30, noise=0.3)
    oh = OnlineHierarchy(90, 4)
    oh.initialize(x)
    check_invariants(oh)
    top = oh.labels[:, 3]
    assert torch.unique(top).numel() == 3
    for b in range(3):
        assert torch.unique(top[b * 30 : (b + 1) * 30]).numel() == 1
    assert oh.conformity == 1.0 and oh.conformity_per_level == (1.0, 1.0)
    assert torch.allclose(oh.bank.norm(dim=1), torch.ones(90))


def test_dbscan_noise_points_become_singletons():
    x = torch.cat([blobs(orthogonal_centres(1, 8), per=10, noise=0.1), torch.eye(8)[4:6]])
    labels, share = dbscan_levels(x, radii=(0.3, 0.5), min_samples=4)
    assert labels.shape == (12, 3) and torch.equal(labels[:, 0], torch.arange(12))
    for h in (1, 2):
        assert torch.unique(labels[:10, h]).numel() == 1
        assert len({int(labels[10, h]), int(labels[11, h]), int(labels[0, h])}) == 3
    assert share == 1.0


def test_enforce_hierarchy_moves_minority_and_reports_conformity():
    raw = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 1], [3, 1, 1], [4, 1, 1]])
    # cluster 0 of level 1 = samples 0,1,2 with parents 0,0,1 -> majority 0; sample 2 does not conform.
    labels, share, per_level = enforce_hierarchy(raw)
    assert torch.equal(labels[:, 2], torch.tensor([0, 0, 0, 1, 1]))
    assert share == pytest.approx(4 / 5) and per_level == (pytest.approx(4 / 5),)


def test_enforce_hierarchy_tie_goes_to_smallest_parent():
    raw = torch.tensor([[0, 0, 1], [1, 0, 0], [2, 1, 1]])
    labels, share, _ = enforce_hierarchy(raw)
    assert labels[0, 2] == labels[1, 2] != labels[2, 2]
    assert share == pytest.approx(2 / 3)


def test_kmeans_levels_nest_and_report_conformity():
    x = blobs(torch.randn(6, 8, generator=torch.Generator().manual_seed(3)), per=20, noise=0.8)
    labels, share = kmeans_levels(x, cluster_counts=(12, 6, 3), seed=0)
    assert labels.shape == (120, 4) and labels.dtype == torch.long
    assert torch.equal(labels[:, 0], torch.arange(120))
    assert 0.0 <= share <= 1.0
    for h in range(1, 3):
        pairs = torch.unique(labels[:, h] * 120 + labels[:, h + 1])
        assert torch.unique(pairs // 120).numel() == pairs.numel()
    again, share2 = kmeans_levels(x, cluster_counts=(12, 6, 3), seed=0)
    assert torch.equal(labels, again) and share == share2


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: kmeans_levels(x, (3, 6), 0), "cluster_counts must decrease"),
        (lambda x: kmeans_levels(x, (), 0), "cluster_counts"),
        (lambda x: kmeans_levels(x, (100,), 0), "cluster_counts must not exceed"),
        (lambda x: dbscan_levels(x, (0.8, 0.6)), "radii must increase"),
        (lambda x: dbscan_levels(x, (0.5, 2.5)), "radii must lie in"),
        (lambda x: dbscan_levels(x, (0.5,), min_samples=0), "min_samples"),
        (lambda x: dbscan_levels(x[:, :1].squeeze(1), (0.5,)), "2-D"),
        (lambda x: dbscan_levels(x * float("nan"), (0.5,)), "NaN"),
    ],
)
def test_offline_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(20, 4))


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_levels": 0}, "num_levels"),
        ({"radii": (0.8, 0.7, 0.6)}, "radii must increase"),
        ({"radii": (0.6, 0.7)}, "radii must have num_levels - 1 = 3"),
        ({"radii": (0.0, 0.7, 0.8)}, "radii must lie in"),
        ({"min_samples": 0}, "min_samples"),
        ({"merge_threshold": 1.5}, "merge_threshold"),
        ({"merge_threshold": (0.9, 0.9)}, "merge_threshold"),
        ({"split_scale": 0.0}, "split_scale"),
        ({"assign": "propagate"}, "assign"),
        ({"feature_momentum": 1.0}, "feature_momentum"),
        ({"recheck_fraction": -0.1}, "recheck_fraction"),
        ({"max_clusters_per_level": 0}, "max_clusters_per_level"),
        ({"max_units": 1}, "max_units"),
        ({"split_budget": 0}, "split_budget"),
        ({"device": "no-such-device"}, "device"),
    ],
)
def test_bad_options_raise_clear_errors(kwargs, match):
    args = {"num_samples": 10, "num_levels": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        OnlineHierarchy(**args)


def test_default_radii_follow_the_paper():
    assert OnlineHierarchy(10, 4).radii == (0.6, 0.7, 0.8)
    assert OnlineHierarchy(10, 3).radii == (0.6, 0.8)
    assert OnlineHierarchy(10, 2).radii == (0.7,)
    assert OnlineHierarchy(10, 1).radii == ()
    # sigma_m defaults to "centres closer than the level's radius": cos > 1 - r^2 / 2
    assert OnlineHierarchy(10, 4).merge_threshold == pytest.approx((0.82, 0.755, 0.68))
    assert OnlineHierarchy(10, 3, merge_threshold=0.9).merge_threshold == (0.9, 0.9)


def test_calls_before_initialize_and_bad_batches():
    oh = OnlineHierarchy(8, 3)
    check_invariants(oh)  # every sample its own cluster until initialize
    with pytest.raises(RuntimeError, match="initialize"):
        oh.update(torch.arange(2), torch.randn(2, 4))
    with pytest.raises(ValueError, match="num_samples = 8"):
        oh.initialize(torch.randn(9, 4))
    oh.initialize(torch.randn(8, 4))
    with pytest.raises(ValueError, match="indices must lie"):
        oh.update(torch.tensor([0, 8]), torch.randn(2, 4))
    with pytest.raises(ValueError, match="features must be"):
        oh.update(torch.tensor([0, 1]), torch.randn(2, 5))
    with pytest.raises(ValueError, match="indices must be a 1-D integer"):
        oh.update(torch.tensor([0.0, 1.0]), torch.randn(2, 4))
    assert oh.update(torch.empty(0, dtype=torch.long), torch.empty(0, 4)).touched == (0, 0)


# ---------------------------------------------------------------- split and merge in update


def test_update_splits_two_separated_blobs_inside_one_cluster():
    centre = orthogonal_centres(1, 16)
    oh = OnlineHierarchy(40, 4)
    oh.initialize(blobs(centre, per=40, noise=0.2))
    assert oh.num_clusters == (40, 1, 1, 1)
    moved = blobs(orthogonal_centres(2, 16), per=20, noise=0.2, seed=1)  # samples 0-19 near e0, 20-39 near e1
    stats = oh.update(torch.arange(40), moved)
    check_invariants(oh)
    assert stats.created == (1, 1, 1)
    for h in range(1, 4):
        first, second = oh.labels[:20, h], oh.labels[20:, h]
        assert torch.unique(first).numel() == 1 and torch.unique(second).numel() == 1
        assert first[0] != second[0]


@pytest.mark.parametrize("assign", ["nearest", "peak"])
def test_density_peaks_split_separated_groups_only(assign):
    # Group 0: two tight blobs of 6 far apart; group 1: one tight blob of 5; group 2: a single unit.
    x = torch.cat(
        [blobs(orthogonal_centres(2, 8), 6, 0.05), blobs(torch.eye(8)[5:6], 5, 0.05, seed=2), torch.eye(8)[7:8]]
    )
    owner = assign_to_prototypes(
        x, torch.ones(18), torch.tensor([12, 5, 1]), cutoff=0.6, min_delta=0.6, assign=assign
    )
    assert torch.unique(owner[:6]).numel() == 1 and torch.unique(owner[6:12]).numel() == 1
    assert owner[0] != owner[6]
    assert torch.unique(owner[12:17]).numel() == 1 and 12 <= int(owner[12]) < 17
    assert owner[17] == 17


def test_density_peaks_oversized_group_uses_a_strided_subset():
    x = blobs(orthogonal_centres(2, 8), 40, 0.05)
    owner = assign_to_prototypes(
        x, torch.ones(80), torch.tensor([80]), cutoff=0.6, min_delta=0.6, max_units=16
    )
    assert torch.unique(owner[:40]).numel() == 1 and torch.unique(owner[40:]).numel() == 1
    assert owner[0] != owner[40]


def test_density_peaks_oversized_group_prototypes_own_themselves():
    # A zero centre (a zero feature) has similarity 0 to every prototype, itself included: argmax
    # alone would hand prototype 30 (a strided candidate) to the first prototype in row order.
    x = blobs(orthogonal_centres(2, 8), 40, 0.05)
    x[30] = 0.0
    owner = assign_to_prototypes(x, torch.ones(80), torch.tensor([80]), cutoff=0.6, min_delta=0.6, max_units=16)
    protos = torch.unique(owner)
    assert protos.numel() == 3 and int(protos[0]) < 30  # a blob peak comes first, so the argmax tie matters
    assert owner[30] == 30
    assert torch.equal(owner[owner], owner)  # every owner is a prototype that owns itself


def test_update_oversized_cluster_with_a_zero_feature_keeps_the_hierarchy():
    # Regression (property test, --hypothesis-seed=0): one cluster of 18 samples, more than max_units = 3,
    # so its prototypes are a strided subset {0, 6, 12}; sample 12 gets a zero feature. Its zero centre
    # made argmax send prototype 12 to prototype 0 while sample 8 (negative cosine to 0 and 6) still
    # chose 12, so sample 8 was moved to cluster id -1 (RuntimeError in _move_units).
    oh = OnlineHierarchy(
        18, 2, radii=(1.0,), min_samples=1, merge_threshold=0.0, split_scale=1.0, assign="nearest",
        recheck_fraction=0.0, max_clusters_per_level=1, max_units=3, split_budget=1,
    )
    oh.initialize(torch.randn(18, 3, generator=torch.Generator().manual_seed(0)))
    assert oh.num_clusters == (18, 1)
    stats = oh.update(torch.tensor([12]), torch.zeros(1, 3))
    check_invariants(oh)
    assert torch.equal(oh.bank[12], torch.zeros(3))
    assert stats.checked == (1,) and stats.created == (2,) and oh.num_clusters == (18, 3)
    # The zero-feature prototype keeps a part of its own, with the sample that chose it.
    assert oh.labels[12, 1] == oh.labels[8, 1]
    assert int((oh.labels[:, 1] == oh.labels[12, 1]).sum()) == 2


def test_update_merges_sibling_clusters_with_near_identical_centres():
    oh = OnlineHierarchy(30, 3)
    x = blobs(orthogonal_centres(1, 8), per=30, noise=0.1)
    oh.initialize(x)
    cid = int(oh.labels[0, 1])
    ids = oh.split(1, cid, [list(range(15)), list(range(15, 30))])
    check_invariants(oh)
    assert oh.num_clusters[1] == 2 and oh.labels[20, 1] == ids[1]
    stats = oh.update(torch.tensor([3]), x[3:4])
    check_invariants(oh)
    assert stats.merged[0] == 1 and oh.num_clusters == (30, 1, 1)
    assert int(oh.labels[29, 1]) == min(ids)


def test_split_then_merge_does_not_undo_itself():
    # Two groups whose points are far apart (split) but whose centres are close (would merge):
    # the split is dropped before it happens.
    oh = OnlineHierarchy(8, 2, radii=(0.5,), min_samples=1, merge_threshold=0.5)
    oh.initialize(torch.ones(8, 3))
    pts = torch.tensor([[1.0, 0.3, 0.0], [1.0, -0.3, 0.0], [1.0, 0.0, 0.3], [1.0, 0.0, -0.3]]).repeat(2, 1)
    stats = oh.update(torch.arange(8), pts)
    check_invariants(oh)
    assert stats.created == (0,) and oh.num_clusters == (8, 1)


def test_max_clusters_per_level_bounds_the_processed_clusters():
    x = blobs(orthogonal_centres(6, 8), per=5, noise=0.05)
    oh = OnlineHierarchy(30, 2, radii=(0.3,), max_clusters_per_level=2)
    oh.initialize(x)
    stats = oh.update(torch.tensor([0, 1, 2, 5, 10, 15, 20, 25]), x[[0, 1, 2, 5, 10, 15, 20, 25]])
    assert stats.touched == (6,) and stats.processed == (2,)
    check_invariants(oh)


def test_duplicate_indices_keep_the_first_feature_and_momentum_mixes():
    x = blobs(orthogonal_centres(2, 8), per=5, noise=0.1)
    oh = OnlineHierarchy(10, 2, feature_momentum=0.5)
    oh.initialize(x)
    f = F.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    oh.update(torch.tensor([4, 4, 7]), f)
    assert torch.allclose(oh.bank[4], F.normalize(0.5 * x[4] + 0.5 * f[0], dim=0), atol=1e-6)
    assert torch.allclose(oh.bank[7], F.normalize(0.5 * x[7] + 0.5 * f[2], dim=0), atol=1e-6)
    check_invariants(oh)


def test_recheck_fraction_waits_for_enough_new_features():
    x = blobs(orthogonal_centres(1, 8), per=20, noise=0.1)
    oh = OnlineHierarchy(20, 2, recheck_fraction=0.5)
    oh.initialize(x)
    assert oh.update(torch.arange(5), x[:5]).checked == (0,)
    assert oh.update(torch.arange(5, 10), x[5:10]).checked == (1,)
    assert oh.update(torch.arange(10, 15), x[10:15]).checked == (0,)


# ---------------------------------------------------------------- primitives


def test_primitives_refuse_what_would_break_the_hierarchy():
    x = torch.cat([blobs(orthogonal_centres(2, 8), per=6, noise=0.05), blobs(torch.eye(8)[3:4], 6, 0.05, seed=1)])
    oh = OnlineHierarchy(18, 3, radii=(0.3, 1.5))
    oh.initialize(x)
    a, b, c = (int(oh.labels[i, 1]) for i in (0, 6, 12))
    assert len({a, b, c}) == 3 and oh.num_clusters[2] == 1
    ids = oh.split(2, int(oh.labels[0, 2]), [[a], [b, c]])  # now a and b differ in parent
    assert len(ids) == 2 and oh.labels[0, 2] != oh.labels[6, 2] == oh.labels[12, 2]
    before = oh.labels.clone()
    with pytest.raises(ValueError, match="different parents"):
        oh.merge(1, [a, b])
    with pytest.raises(ValueError, match="preserve property"):
        oh.split(1, a, [[0, 1, 2], [3, 4, 5, 6]])  # sample 6 belongs to cluster b
    with pytest.raises(ValueError, match="partition"):
        oh.split(1, a, [[0, 1, 2], [3, 4]])
    with pytest.raises(ValueError, match="repeat"):
        oh.split(1, a, [[0, 1, 2], [2, 3, 4, 5]])
    with pytest.raises(ValueError, match="non-empty"):
        oh.split(1, a, [[0, 1, 2, 3, 4, 5], []])
    with pytest.raises(ValueError, match="does not exist"):
        oh.merge(1, [a, 17])
    with pytest.raises(ValueError, match="instance level"):
        oh.merge(0, [0, 1])
    assert torch.equal(oh.labels, before)
    check_invariants(oh)
    assert oh.merge(2, [int(oh.labels[0, 2]), int(oh.labels[6, 2])]) == min(ids)  # top level: any clusters
    assert oh.merge(1, [a, b]) == min(a, b)
    check_invariants(oh)


def test_reset_accepts_offline_labels_and_refuses_labels_that_do_not_nest():
    x = blobs(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)), per=10, noise=0.5)
    labels, _ = kmeans_levels(x, cluster_counts=(8, 4, 2), seed=0)
    oh = OnlineHierarchy(40, 4)
    oh.reset(x, labels)
    assert torch.equal(oh.labels, labels)
    check_invariants(oh)
    oh.update(torch.arange(10), x[:10])
    check_invariants(oh)
    bad = labels.clone()
    bad[:, 1] = 0  # one level-1 cluster over several level-2 clusters
    with pytest.raises(ValueError, match="do not nest"):
        OnlineHierarchy(40, 4).reset(x, bad)
    with pytest.raises(ValueError, match="arange"):
        OnlineHierarchy(40, 4).reset(x, labels.flip(0))


def test_ids_stay_below_n_over_many_updates():
    g = torch.Generator().manual_seed(0)
    x = blobs(torch.randn(4, 6, generator=g), per=8, noise=0.5)
    oh = OnlineHierarchy(32, 3, radii=(0.4, 0.8), min_samples=2, recheck_fraction=0.0)
    oh.initialize(x)
    for _ in range(150):
        idx = torch.randperm(32, generator=g)[:8]
        oh.update(idx, torch.randn(8, 6, generator=g))
    check_invariants(oh)
    assert int(oh.labels.max()) < 32


# ---------------------------------------------------------------- determinism and checkpoints


def drive(oh: OnlineHierarchy, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(oh.num_samples, (12,), generator=g)
        oh.update(idx, torch.randn(12, oh.bank.shape[1], generator=g))


def test_same_inputs_same_labels():
    x = blobs(torch.randn(5, 6, generator=torch.Generator().manual_seed(1)), per=10, noise=0.6)
    a, b = OnlineHierarchy(50, 4, min_samples=2), OnlineHierarchy(50, 4, min_samples=2)
    a.initialize(x)
    b.initialize(x.clone())
    drive(a, 30, seed=5)
    drive(b, 30, seed=5)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.bank, b.bank)


def test_state_dict_round_trip_resumes_exactly():
    x = blobs(torch.randn(5, 6, generator=torch.Generator().manual_seed(1)), per=10, noise=0.6)
    a = OnlineHierarchy(50, 4, min_samples=2, feature_momentum=0.3)
    a.initialize(x)
    drive(a, 10, seed=2)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    b = OnlineHierarchy(50, 4, min_samples=2, feature_momentum=0.3)
    b.load_state_dict(state)
    assert torch.equal(a.labels, b.labels) and b.conformity == a.conformity
    drive(a, 20, seed=3)
    drive(b, 20, seed=3)
    assert torch.equal(a.labels, b.labels) and torch.equal(a.bank, b.bank)
    check_invariants(b)


def test_load_state_dict_refuses_mismatches():
    a = OnlineHierarchy(20, 3)
    a.initialize(torch.randn(20, 4))
    with pytest.raises(ValueError, match="num_samples=20"):
        OnlineHierarchy(21, 3).load_state_dict(a.state_dict())
    broken = a.state_dict()
    broken["parent"][0, 0] = -1
    with pytest.raises(ValueError, match="parent pointers"):
        OnlineHierarchy(20, 3).load_state_dict(broken)
    with pytest.raises(ValueError, match="keys"):
        OnlineHierarchy(20, 3).load_state_dict({"bank": a.bank})
    fresh = OnlineHierarchy(20, 3)
    fresh.load_state_dict(OnlineHierarchy(20, 3).state_dict())  # an uninitialised state loads too
    check_invariants(fresh)


# ---------------------------------------------------------------- property-based


N_MAX, DIM = 24, 3


@st.composite
def hierarchies(draw):
    n = draw(st.integers(2, N_MAX))
    num_levels = draw(st.integers(1, 4))
    radii = tuple(sorted(draw(st.lists(st.floats(0.05, 1.5), min_size=num_levels - 1, max_size=num_levels - 1, unique=True))))
    oh = OnlineHierarchy(
        n,
        num_levels,
        radii=radii if num_levels > 1 else None,
        min_samples=draw(st.integers(1, 4)),
        merge_threshold=draw(st.floats(0.0, 0.999)),
        split_scale=draw(st.floats(0.2, 2.0)),
        assign=draw(st.sampled_from(["nearest", "peak"])),
        feature_momentum=draw(st.sampled_from([0.0, 0.5])),
        recheck_fraction=draw(st.sampled_from([0.0, 0.25, 1.0])),
        max_clusters_per_level=draw(st.integers(1, 8)),
        max_units=draw(st.integers(2, 8)),
        split_budget=draw(st.integers(1, 16)),
    )
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    oh.initialize(torch.randn(n, DIM, generator=g) + draw(st.floats(0.0, 3.0)) * torch.ones(DIM))
    return oh


def random_split(data, oh: OnlineHierarchy) -> None:
    level = data.draw(st.integers(1, oh.num_levels - 1))
    ids = oh.active_ids(level).tolist()
    cid = data.draw(st.sampled_from(ids))
    units = oh.children(level, cid).tolist()
    groups_of = data.draw(st.lists(st.integers(0, 3), min_size=len(units), max_size=len(units)))
    groups = [[u for u, g in zip(units, groups_of) if g == k] for k in range(4)]
    groups = [g for g in groups if g]
    before = oh.labels.clone()
    new_ids = oh.split(level, cid, groups)
    assert new_ids[0] == cid and len(new_ids) == len(groups)
    for gid, group in zip(new_ids, groups):
        members = torch.isin(before[:, level - 1], torch.tensor(group))
        assert bool((oh.labels[members, level] == gid).all())
    assert torch.equal(oh.labels[:, :level], before[:, :level])
    assert torch.equal(oh.labels[:, level + 1 :], before[:, level + 1 :])


def random_merge(data, oh: OnlineHierarchy) -> None:
    level = data.draw(st.integers(1, oh.num_levels - 1))
    ids = oh.active_ids(level)
    labels = oh.labels
    if level < oh.num_levels - 1:
        anchor = data.draw(st.sampled_from(ids.tolist()))
        parent = int(labels[labels[:, level] == anchor, level + 1][0])
        ids = torch.unique(labels[labels[:, level + 1] == parent, level])
    chosen = data.draw(st.lists(st.sampled_from(ids.tolist()), min_size=1, max_size=4, unique=True))
    before = labels.clone()
    kept = oh.merge(level, chosen)
    assert kept == min(chosen)
    members = torch.isin(before[:, level], torch.tensor(chosen))
    assert bool((oh.labels[members, level] == kept).all())
    assert torch.equal(oh.labels[:, :level], before[:, :level])


def random_bad_call(data, oh: OnlineHierarchy) -> None:
    """Merging clusters of different parents, or splitting with a unit from elsewhere, is refused."""
    level = data.draw(st.integers(1, oh.num_levels - 1))
    labels = oh.labels
    before = labels.clone()
    pairs = torch.unique(torch.stack([labels[:, level], labels[:, min(level + 1, oh.num_levels - 1)]], 1), dim=0)
    if level < oh.num_levels - 1 and torch.unique(pairs[:, 1]).numel() > 1:
        i = data.draw(st.integers(0, pairs.shape[0] - 1))
        others = pairs[pairs[:, 1] != pairs[i, 1], 0]
        with pytest.raises(ValueError, match="preserve property"):
            oh.merge(level, [int(pairs[i, 0]), int(others[0])])
    ids = oh.active_ids(level)
    if ids.numel() > 1:
        cid, other = (int(v) for v in ids[:2])
        foreign = oh.children(level, other)[:1].tolist()
        with pytest.raises(ValueError, match="preserve property"):
            oh.split(level, cid, [oh.children(level, cid).tolist(), foreign])
    assert torch.equal(oh.labels, before)


def random_update(data, oh: OnlineHierarchy) -> None:
    b = data.draw(st.integers(0, oh.num_samples + 2))
    idx = torch.tensor(data.draw(st.lists(st.integers(0, oh.num_samples - 1), min_size=b, max_size=b)), dtype=torch.long)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    feats = torch.randn(b, DIM, generator=g)
    if b and data.draw(st.booleans()):
        feats[0] = 0.0  # a zero feature must not break anything
    stats = oh.update(idx, feats)
    assert len(stats.touched) == oh.num_levels - 1
    assert all(p <= oh.max_clusters_per_level for p in stats.processed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), oh=hierarchies())
def test_random_sequences_of_splits_merges_and_updates_keep_the_hierarchy(data, oh):
    check_invariants(oh)
    ops = [random_update] if oh.num_levels == 1 else [random_split, random_merge, random_bad_call, random_update]
    for _ in range(data.draw(st.integers(1, 12))):
        data.draw(st.sampled_from(ops))(data, oh)
        check_invariants(oh)
    state = oh.state_dict()
    clone = OnlineHierarchy(oh.num_samples, oh.num_levels, radii=oh.radii or None)
    clone.load_state_dict(state)
    assert torch.equal(clone.labels, oh.labels)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(8, 40))
def test_update_is_deterministic_for_random_inputs(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g)
    a, b = OnlineHierarchy(n, 4, radii=(0.3, 0.6, 1.0), min_samples=2), OnlineHierarchy(n, 4, radii=(0.3, 0.6, 1.0), min_samples=2)
    a.initialize(x)
    b.initialize(x)
    for _ in range(6):
        idx = torch.randint(n, (n // 2,), generator=g)
        f = torch.randn(n // 2, DIM, generator=g)
        assert a.update(idx, f) == b.update(idx.clone(), f.clone())
    assert torch.equal(a.labels, b.labels)
    check_invariants(a)
    assert np.isfinite(a.conformity)
