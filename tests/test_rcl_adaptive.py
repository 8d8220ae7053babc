"""RCL's data-adaptive DBSCAN radii (relssl.cluster.radii, rcl.radii_rule): k-th-neighbour distances and
quantiles against NumPy and scikit-learn, a nested-cluster set whose levels get strictly fewer clusters, the
fixed rule's radii used exactly, radii that survive a checkpoint, and rank 0's radii on every rank."""

from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.cluster import DBSCAN

from gloo_spawn import run_ranks
from relssl.augment import to_normalized
from relssl.cluster import OnlineHierarchy, adaptive_radii, dbscan_levels, kth_neighbour_distances
from relssl.cluster.radii import check_quantiles, query_rows
from relssl.errors import ConfigError
from relssl.methods import EpochContext
from relssl.methods.rcl import RCLConfig
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"rcl.projector_hidden": [16], "rcl.projector_dim": 8, "rcl.predictor_hidden": 12, "rcl.queue_size": 64,
         "rcl.momentum": 0.9, "rcl.warmup_epochs": 1}
SUPER, SUB, POINTS = 4, 4, 30  # the nested set: 4 superclusters x 4 subclusters x 30 points = 480


def _nested(seed: int = 0, dim: int = 16) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Unit vectors: random supercluster centres, subcluster centres near them, tight points near those.

    Returns (features (480, dim), subcluster id, supercluster id)."""
    rng = np.random.default_rng(seed)
    sup = rng.normal(size=(SUPER, dim))
    sub = sup[:, None] / np.linalg.norm(sup, axis=1)[:, None, None] + 0.25 * rng.normal(size=(SUPER, SUB, dim)) / 4
    sub /= np.linalg.norm(sub, axis=-1, keepdims=True)
    pts = sub[:, :, None] + 0.04 * rng.normal(size=(SUPER, SUB, POINTS, dim)) / 4
    pts /= np.linalg.norm(pts, axis=-1, keepdims=True)
    ids = np.arange(SUPER * SUB * POINTS)
    return torch.from_numpy(pts.reshape(-1, dim)).float(), ids // POINTS, ids // (SUB * POINTS)


def _np_kth(x: np.ndarray, k: int, rows: np.ndarray) -> np.ndarray:
    """Brute force in float64: sorted Euclidean distances of each row to every sample, the k-th (itself first)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.sqrt(((x[rows, None, :] - x[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, k - 1]


def _counts(labels: torch.Tensor) -> list[int]:
    return [len(np.unique(labels[:, h].numpy())) for h in range(1, labels.shape[1])]


def _nested_ok(labels: np.ndarray) -> bool:
    """Cluster preserve property: each level-h cluster lies inside one level-(h+1) cluster."""
    return all(len(np.unique(labels[labels[:, h] == c, h + 1])) == 1
               for h in range(labels.shape[1] - 1) for c in np.unique(labels[:, h]))


# ----------------------------------------------------------------------------- the rule itself


@pytest.mark.parametrize("k", [1, 2, 4, 9])
def test_kth_neighbour_distances_equal_a_numpy_brute_force(k):
    x = torch.randn(300, 12, generator=torch.Generator().manual_seed(k))
    x[7] = x[3] * 2.0  # a duplicate direction: distance 0 to sample 3, as to itself
    rows = torch.tensor([0, 3, 7, 150, 299])
    got = kth_neighbour_distances(x, k, rows).numpy()
    np.testing.assert_allclose(got, _np_kth(x.double().numpy(), k, rows.numpy()), atol=2e-6)
    np.testing.assert_allclose(kth_neighbour_distances(x, k).numpy()[rows.numpy()], got, atol=0)
    if k == 2:
        assert got[1] == pytest.approx(0.0, abs=1e-3) and got[2] == pytest.approx(0.0, abs=1e-3)


def test_adaptive_radii_are_quantiles_and_make_that_share_of_dbscan_core_points():
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    qs = (0.1, 0.3, 0.6)
    radii = adaptive_radii(x, qs, min_samples=5)
    ref = np.quantile(_np_kth(x.double().numpy(), 5, np.arange(2000)), qs)  # linear interpolation, as torch
    np.testing.assert_allclose(radii, ref, atol=2e-6)
    unit = (x / x.norm(dim=1, keepdim=True)).numpy()
    for q, r in zip(qs, radii):  # scikit-learn's own core points: about a share q of the samples
        core = len(DBSCAN(eps=r, min_samples=5).fit(unit).core_sample_indices_) / len(unit)
        assert core == pytest.approx(q, abs=2e-3)


def test_adaptive_radii_subsample_evenly_and_stay_strictly_increasing():
    assert query_rows(5).tolist() == [0, 1, 2, 3, 4]
    assert query_rows(101, 5).tolist() == [0, 25, 50, 75, 100]
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(1))
    rows = query_rows(500, 100)
    ref = np.quantile(_np_kth(x.double().numpy(), 4, rows.numpy()), [0.2, 0.5])
    np.testing.assert_allclose(adaptive_radii(x, [0.2, 0.5], 4, max_queries=100), ref, atol=2e-6)
    same = torch.ones(50, 4)  # every feature identical: all distances 0, radii nudged apart above 0
    assert adaptive_radii(same, [0.1, 0.5, 0.9], 4) == (1e-6, 2e-6, 3e-6)
    assert adaptive_radii(x, [0.5], 1) == adaptive_radii(x, [0.5], 2)  # min_samples 1: the nearest other sample


@pytest.mark.parametrize("bad", [[], [0.0, 0.5], [0.2, 1.0], [0.3, 0.3], [0.5, 0.2], ["a"]])
def test_bad_quantiles_are_refused(bad):
    with pytest.raises(ValueError, match="quantiles"):
        check_quantiles(bad)


def test_nested_set_levels_get_strictly_fewer_clusters_as_they_rise():
    x, sub, sup = _nested()
    radii = adaptive_radii(x, RCLConfig().radius_quantiles, 4)  # the default quantiles
    labels, _ = dbscan_levels(x, radii, 4)
    counts = _counts(labels)
    assert all(a > b for a, b in zip(counts, counts[1:])), counts
    assert counts[-1] > 1
    assert _nested_ok(labels.numpy())
    for h in range(1, labels.shape[1]):  # no level joins points of two superclusters
        assert all(len(np.unique(sup[labels[:, h].numpy() == c])) == 1 for c in np.unique(labels[:, h]))
    # the paper's fixed radii, made for ResNet-50 on ImageNet, give the same 4 clusters at every level here
    fixed, _ = dbscan_levels(x, [0.6, 0.7, 0.8], 4)
    assert _counts(fixed) == [SUPER] * 3
    # larger quantiles reach the subclusters: each then is one cluster (the scale the rule adapts to)
    coarse, _ = dbscan_levels(x, adaptive_radii(x, [0.5, 0.9], 4), 4)
    assert len(np.unique(coarse[:, 2].numpy())) < len(np.unique(coarse[:, 1].numpy()))
    assert all(len(np.unique(sub[coarse[:, 2].numpy() == c])) == 1 for c in np.unique(coarse[:, 2]))


# ----------------------------------------------------------------------------- inside RCL


def _method(n: int, seed: int = 0, **overrides):
    cfg = build_config({}, {"method": "rcl", **SMALL, **overrides})
    torch.manual_seed(seed)
    return build_method(cfg, create_backbone("conv4"), num_images=n, num_classes=1)


def _context(method, epoch: int, keys: torch.Tensor) -> EpochContext:
    """An epoch context whose `features` returns `keys` (as if the key encoder had produced them)."""
    return EpochContext(epoch=epoch, images=None, device=torch.device("cpu"), seed=0,
                        normalize=lambda b: to_normalized(b, mean=(0.5,) * 3, std=(0.25,) * 3),
                        optimizer=torch.optim.SGD(method.parameters(), lr=0.1),
                        extract=lambda module, desc: keys.clone())


def test_config_selects_the_rule_and_sizes_the_levels():
    assert RCLConfig().radii_rule == "adaptive" and RCLConfig().levels == [0.05, 0.1, 0.2]
    assert RCLConfig(radii=[0.5, 0.9]).radii_rule == "fixed"  # radii alone: those radii (older configs)
    assert RCLConfig(radii=[0.5, 0.9], radii_rule="adaptive").levels == [0.05, 0.1, 0.2]
    assert RCLConfig(radius_quantiles=[0.2, 0.4]).levels == [0.2, 0.4]
    assert len(_method(40, **{"rcl.radius_quantiles": [0.2, 0.4]}).predictors) == 2
    for bad in ([0.4, 0.2], [0.0, 0.2], [0.5, 1.5]):
        with pytest.raises(ConfigError, match=r"rcl\.radius_quantiles"):
            build_config({}, {"method": "rcl", "rcl.radius_quantiles": bad})


def test_rcl_adaptive_rule_builds_the_online_hierarchy_with_the_chosen_radii():
    x, _, _ = _nested()
    method = _method(len(x))
    assert method.radii is None  # not chosen before the warm-up ends
    method.on_epoch_start(_context(method, 0, x))
    assert method.radii is None and method.hierarchy is None
    method.on_epoch_start(_context(method, 1, x))
    expected = adaptive_radii(torch.nn.functional.normalize(x, dim=1), [0.05, 0.1, 0.2], 4)  # as RCL normalises keys
    assert method.radii == expected and method.hierarchy.radii == expected
    assert method.hierarchy.merge_threshold == pytest.approx(tuple(1 - r * r / 2 for r in expected))
    assert torch.equal(method.level_labels, dbscan_levels(x, expected, 4)[0])
    counts = _counts(method.level_labels)
    assert all(a > b for a, b in zip(counts, counts[1:])) and counts[-1] > 1
    diag = method.diagnostics()
    assert [diag[f"clusters_l{h}"] for h in (1, 2, 3)] == counts
    assert [diag[f"radius_l{h}"] for h in (1, 2, 3)] == list(expected)


@pytest.mark.parametrize("criteria", ["online", "dbscan"])
def test_fixed_rule_uses_the_given_radii_exactly(criteria):
    x, _, _ = _nested()
    radii = [0.05, 0.3, 0.9]
    method = _method(len(x), **{"rcl.radii_rule": "fixed", "rcl.radii": radii, "rcl.criteria": criteria})
    assert method.radii == tuple(radii)  # known from the start
    method.on_epoch_start(_context(method, 1, x))
    assert method.radii == tuple(radii)
    if criteria == "online":
        assert method.hierarchy.radii == tuple(radii)
    assert torch.equal(method.level_labels, dbscan_levels(x, radii, 4)[0])


@pytest.mark.parametrize("criteria", ["online", "dbscan"])
def test_chosen_radii_survive_a_save_and_restore(tmp_path, criteria):
    x, _, _ = _nested()
    method = _method(len(x), **{"rcl.criteria": criteria})
    method.on_epoch_start(_context(method, 1, x))
    chosen = method.radii
    torch.save(method.state_dict(), tmp_path / "rcl.pt")

    fresh = _method(len(x), seed=1)  # another network; its own keys would give other radii
    fresh.load_state_dict(torch.load(tmp_path / "rcl.pt", weights_only=True))
    assert fresh.radii == chosen and all(isinstance(r, float) for r in fresh.radii)
    if criteria == "online":
        assert fresh.hierarchy.radii == chosen
        assert fresh.hierarchy.merge_threshold == method.hierarchy.merge_threshold
        fresh.on_epoch_start(_context(fresh, 2, torch.randn(len(x), 16)))  # online: never re-chosen
        assert fresh.radii == chosen and torch.equal(fresh.level_labels, method.level_labels)
    assert fresh.diagnostics()["radius_l1"] == chosen[0]

    warm = _method(len(x))  # a warm-up checkpoint of the adaptive rule holds no radii
    torch.save(warm.state_dict(), tmp_path / "warm.pt")
    method.load_state_dict(torch.load(tmp_path / "warm.pt", weights_only=True))
    assert method.radii is None and method.hierarchy is None


def test_a_checkpoint_from_before_the_rule_keeps_its_fixed_radii():
    x, _, _ = _nested()
    old = _method(len(x), **{"rcl.radii": [0.05, 0.3, 0.9]})
    old.on_epoch_start(_context(old, 1, x))
    state = old.state_dict()
    state["_extra_state"] = {"hierarchy": state["_extra_state"]["hierarchy"]}  # no "radii" key yet
    again = _method(len(x), **{"rcl.radii": [0.05, 0.3, 0.9]})
    again.load_state_dict(state)
    assert again.radii == (0.05, 0.3, 0.9) and torch.equal(again.hierarchy.labels, old.hierarchy.labels)


# ----------------------------------------------------------------------------- two gloo ranks


def _gloo_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        x, _, _ = _nested()
        keys = x if rank == 0 else torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
        method = _method(len(x))
        method.on_epoch_start(_context(method, 1, keys))  # only rank 0's keys may count
        torch.save({"radii": method.radii, "state": method.hierarchy.state_dict(),
                    "hierarchy_radii": method.hierarchy.radii}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_rank_zero_chooses_the_radii_and_every_rank_uses_them(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this PyTorch build")
    a, b = run_ranks(_gloo_worker, tmp_path, 2)
    x, _, _ = _nested()
    assert a["radii"] == b["radii"] == adaptive_radii(torch.nn.functional.normalize(x, dim=1), [0.05, 0.1, 0.2], 4)
    assert a["hierarchy_radii"] == b["hierarchy_radii"] == a["radii"]
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key
    rebuilt = OnlineHierarchy(len(x), 4, radii=a["radii"])  # from rank 0's keys, not rank 1's
    rebuilt.initialize(torch.nn.functional.normalize(x, dim=1))  # RCL normalises the keys first
    received = OnlineHierarchy(len(x), 4, radii=b["radii"])
    received.load_state_dict(b["state"])
    assert torch.equal(received.labels, rebuilt.labels) and torch.equal(received.bank, rebuilt.bank)
