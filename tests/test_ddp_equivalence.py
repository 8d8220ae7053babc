"""Two gloo ranks train exactly what one process computes on the global batch.

Each case runs a few optimisation steps of the real Trainer (DistributedDataParallel, the global
batch split over two ranks) and, in this process, the same steps of a single-process Trainer
on the global batch whose BatchNorm layers normalise each rank's half separately (what two
ranks do without SyncBatchNorm). Parameters, queues and RCL's cluster labels must agree. A
negative control breaks SimCLR's gradient-carrying gather and checks that the test notices.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from gloo_spawn import run_ranks
from relssl.augment import AugmentConfig, ViewAugment
from relssl.errors import ConfigError
from relssl.methods import Method
from relssl.optim import build_optimizer
from relssl.train import build_backbone, build_method
from relssl.train.batches import BatchStream
from relssl.train.config import RunConfig, build_config
from relssl.train.trainer import Trainer

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this PyTorch build",
)

WORLD, GLOBAL_BATCH, STEPS, N_IMAGES = 2, 8, 3, 40
# float32 sums in another order (an all-reduce instead of one batch): measured differences were at most
# 5e-5 after 3 steps; leaving out the per-rank BatchNorm, or the gather's gradient, moves weights by 7e-3 to 2.
HEADS = {"projector_hidden": [16], "projector_dim": 8, "predictor_hidden": 16}
COMMON = {"backbone.name": "conv4", "train.batch_size": GLOBAL_BATCH, "train.max_steps": STEPS,
          "train.log_every": 1, "train.progress": False, "train.device": "cpu", "optim.name": "sgd",
          "optim.lr": 0.05, "optim.momentum": 0.9, "eval.linear": False}
CASES: dict[str, dict[str, Any]] = {
    "relational-global": {"method": "relational", "relational.k": 3, "relational.pairs": "global",
                          "relational.head_hidden": 16},
}
LOCAL_PAIRS = {"method": "relational", "relational.k": 3, "relational.pairs": "local", "relational.head_hidden": 16}
CASES = {
    **CASES,
    "simclr": {"method": "simclr", "simclr.projector_hidden": 16, "simclr.projector_dim": 8},
    "mocov2": {"method": "mocov2", "mocov2.queue_size": 12, "mocov2.momentum": 0.9,
               "mocov2.projector_hidden": [16], "mocov2.projector_dim": 8},
    # NNCLR's Eq. 2 gathers the predictions with their gradient. tau 0.5: at 0.1 this 4-image-per-rank set-up
    # is ill-conditioned (a projector unit with batch variance 5e-5; 1e-6 of noise per step moved weights by
    # 4.5e-3 in one process), so float-order noise alone exceeded the tolerance; at 0.5 the ranks agree to 3e-5.
    "nnclr": {"method": "nnclr", "nnclr.queue_size": 12, "nnclr.temperature": 0.5,
              **{f"nnclr.{k}": v for k, v in HEADS.items()}},
    "nnclr-both": {"method": "nnclr", "nnclr.queue_size": 12, "nnclr.temperature": 0.5, "nnclr.softmax_over": "both",
                   **{f"nnclr.{k}": v for k, v in HEADS.items()}},
    "rcl": {"method": "rcl", "rcl.queue_size": 12, "rcl.warmup_epochs": 0, "rcl.radii": [0.9, 1.2],
            "rcl.min_samples": 2, **{f"rcl.{k}": v for k, v in HEADS.items()}},
    # plain DDP (a per-image loss), with a momentum target updated after each averaged step
    "byol": {"method": "byol", "byol.momentum": 0.9, **{f"byol.{k}": v for k, v in HEADS.items()}},
    # k-means on rank 0, its pseudo-labels broadcast
    "deepcluster": {"method": "deepcluster", "deepcluster.num_clusters": 4, "deepcluster.pca_dim": 8},
}
ATOL, RTOL = 1e-4, 1e-4
# The views are the images themselves: ranks draw their augmentations from their own generators, so
# with random views the two runs would see different pixels. Everything else is the real pipeline.
IDENTITY_VIEWS = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0,
                               mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (N_IMAGES, 16, 16, 3), dtype=np.uint8), rng.integers(0, 4, N_IMAGES)


def _config(case: str) -> RunConfig:
    return build_config({}, {**COMMON, **(LOCAL_PAIRS if case == "relational-local" else CASES[case])})


def _method(config: RunConfig) -> Method:
    return build_method(config, build_backbone(config), num_images=N_IMAGES, num_classes=4)


def _state(method: Method) -> dict[str, torch.Tensor]:
    """What must agree: every parameter, the queue, and RCL's cluster labels."""
    keep = ("queue.keys", "queue.indices", "level_labels", "pseudo_labels")
    out = {name: p.detach().clone() for name, p in method.named_parameters()}
    out.update({name: b.clone() for name, b in method.named_buffers() if name.endswith(keep)})
    return {name.replace(".inner.", "."): value for name, value in out.items()}  # PerRankBatchNorm's layer


def _gather_keeping_only_local_gradient(tensor: torch.Tensor) -> torch.Tensor:
    """The usual multi-GPU contrastive bug: all_gather without gradient, the local rows put back with theirs.

    The other ranks' losses then never send gradient to this rank's features.
    """
    from relssl.distributed import gather_no_grad, rank

    parts = list(gather_no_grad(tensor).chunk(WORLD))
    parts[rank()] = tensor
    return torch.cat(parts)


def _shuffle_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of views (GLOBAL_BATCH, 3, 16, 16) and its dataset indices for MoCo v2's shuffled BN."""
    g = torch.Generator().manual_seed(11)
    return torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=g), torch.randperm(N_IMAGES, generator=g)[:GLOBAL_BATCH]


def _shuffle_method() -> Method:
    torch.manual_seed(0)
    return _method(build_config({}, {**COMMON, **CASES["mocov2"], "mocov2.shuffle_bn": True}))


def _shuffled_keys_on_this_rank() -> dict[str, torch.Tensor]:
    from relssl.distributed import rank_slice

    views, indices = _shuffle_batch()
    mine = rank_slice(GLOBAL_BATCH // WORLD)
    method = _shuffle_method()
    method.train()
    return {"keys": method._shuffled_keys(views[mine], indices[mine]), "plain": method.keys(views[mine])}


def _ddp_worker(rank: int, init_file: Path, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))
    try:
        images, labels = _data()
        results = {}
        for case in [*CASES, "relational-local", "simclr-detached-gather"]:
            config = _config(case.removesuffix("-detached-gather"))
            if case.endswith("detached-gather"):
                import relssl.methods.simclr as simclr

                simclr.gather_with_grad = _gather_keeping_only_local_gradient
            method = _method(config)
            trainer = Trainer(config, method, images, labels, IDENTITY_VIEWS, torch.device("cpu"),
                              out_dir / f"{case}-run")
            trainer.run_dir.mkdir(exist_ok=True)
            trainer.fit()
            results[case] = _state(method)
        results["shuffle_bn"] = _shuffled_keys_on_this_rank()
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


class PerRankBatchNorm(nn.Module):
    """A BatchNorm that normalises each rank's rows on its own, as WORLD ranks without SyncBatchNorm do.

    Rows come as (views, ranks, images per rank): the trainer's view-major batch, in which rank r's
    images are the r-th block of every view. The wrapped layer (and its parameters) is the same object.
    """

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        self.inner = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.inner(x)
        local = GLOBAL_BATCH // WORLD
        views = x.shape[0] // GLOBAL_BATCH
        blocks = x.view(views, WORLD, local, *x.shape[1:])
        parts = [self.inner(blocks[:, r].reshape(views * local, *x.shape[1:])) for r in range(WORLD)]
        return torch.stack([p.view(views, local, *x.shape[1:]) for p in parts], dim=1).reshape(x.shape)


def per_rank_batchnorm(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """Wrap every BatchNorm below `module` (except inside `skip`) in PerRankBatchNorm, in place."""
    for name, child in module.named_children():
        if child in skip:
            continue
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, PerRankBatchNorm(child))
        else:
            per_rank_batchnorm(child, skip)


def _reference(case: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    """One process, the global batch, per-rank BatchNorm: the mathematics the two ranks should compute."""
    config = _config(case)
    images, labels = _data()
    method = _method(config)
    # Relational's global pairs are scored by every rank on the whole batch: its head sees all pairs.
    per_rank_batchnorm(method, skip=(getattr(method, "head", None),) if case == "relational-global" else ())
    trainer = Trainer(config, method, images, labels, IDENTITY_VIEWS, torch.device("cpu"), tmp_path / case)
    trainer.run_dir.mkdir()
    trainer.fit()
    return _state(method)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    return run_ranks(_ddp_worker, tmp_path_factory.mktemp("ddp"), WORLD, timeout_s=300)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_match_one_process_on_the_global_batch(case: str, ranks: list, tmp_path: Path) -> None:
    expected = _reference(case, tmp_path)
    first, second = ranks[0][case], ranks[1][case]
    assert set(first) == set(expected)
    for name, value in expected.items():
        assert torch.equal(first[name], second[name]), f"{case}: {name} differs between the ranks"
        if value.is_floating_point():
            torch.testing.assert_close(first[name], value, atol=ATOL, rtol=RTOL, msg=f"{case}: {name}")
            torch.testing.assert_close(second[name], value, atol=ATOL, rtol=RTOL, msg=f"{case}: {name}")
        else:
            assert torch.equal(first[name], value) and torch.equal(second[name], value), f"{case}: {name}"
    initial = _state(_method(_config(case)))
    moved = sum(not torch.allclose(initial[k], expected[k]) for k in expected if expected[k].is_floating_point())
    assert moved > len(expected) // 2  # the steps changed the weights: the agreement is not trivial


def test_queues_and_labels_are_identical_on_both_ranks(ranks: list) -> None:
    for case in ("mocov2", "nnclr", "rcl"):
        for name in ranks[0][case]:
            if "queue" in name or "level_labels" in name:
                assert torch.equal(ranks[0][case][name], ranks[1][case][name]), f"{case}: {name}"
    labels = ranks[0]["rcl"]["level_labels"]
    assert len(torch.unique(labels[:, -1])) < N_IMAGES  # the hierarchy is active: images share clusters


def test_relational_local_pairs_match_the_mean_of_per_rank_losses(ranks: list) -> None:
    """`relational.pairs: local`: each rank scores the pairs of its own images; the reference averages the
    losses of the two halves computed separately (their own BatchNorm statistics in backbone and head)."""
    config = _config("relational-local")
    images, labels = _data()
    method = _method(config)
    optimizer = build_optimizer(config.optim, method)
    augment = ViewAugment(IDENTITY_VIEWS)
    stream = BatchStream(images, labels, GLOBAL_BATCH, seed=config.seed)
    method.train()
    for _, (batch, batch_labels, indices) in zip(range(STEPS), stream.iterate(0)):
        halves = zip(batch.chunk(WORLD), batch_labels.chunk(WORLD), indices.chunk(WORLD))
        loss = torch.stack([method.training_step(augment(x, method.num_views), y, i).loss for x, y, i in halves]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = _state(method)
    for name, value in expected.items():
        assert torch.equal(ranks[0]["relational-local"][name], ranks[1]["relational-local"][name]), name
        torch.testing.assert_close(ranks[0]["relational-local"][name], value, atol=ATOL, rtol=RTOL, msg=name)
    global_pairs = ranks[0]["relational-global"]
    assert max((global_pairs[k] - expected[k]).abs().max().item() for k in expected) > 10 * ATOL  # another option


def test_a_gather_without_gradient_is_caught(ranks: list, tmp_path: Path) -> None:
    """Negative control: SimCLR whose gather keeps only the local rows' gradient trains other weights."""
    expected = _reference("simclr", tmp_path)
    broken = ranks[0]["simclr-detached-gather"]
    worst = max((broken[k] - expected[k]).abs().max().item() for k in expected if "backbone" in k)
    assert worst > 100 * ATOL


def test_the_batch_stream_splits_the_global_batch_by_rank() -> None:
    images, labels = _data()
    one = BatchStream(images, labels, GLOBAL_BATCH, seed=5)
    parts = [BatchStream(images, labels, GLOBAL_BATCH, seed=5, rank=r, world_size=WORLD) for r in range(WORLD)]
    for epoch in range(2):
        full = one.epoch_indices(epoch)
        halves = [p.epoch_indices(epoch) for p in parts]
        assert torch.equal(torch.cat(halves, dim=1), full)  # rank r holds the r-th block of every step
        seen = torch.cat([h.flatten() for h in halves])
        assert len(set(seen.tolist())) == len(seen) == (N_IMAGES // GLOBAL_BATCH) * GLOBAL_BATCH
    assert parts[0].steps_per_epoch == one.steps_per_epoch == N_IMAGES // GLOBAL_BATCH


def test_mocov2_shuffled_bn_keys(ranks: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank's keys come from the key encoder run on a shuffled slice of the global batch, in the order of
    the views: computed here by hand, one slice at a time (BatchNorm statistics per slice)."""
    views, indices = _shuffle_batch()
    order = torch.argsort((indices * 2654435761) % 4294967296)
    local = GLOBAL_BATCH // WORLD
    monkeypatch.setattr("relssl.methods.mocov2.world_size", lambda: WORLD)  # build it as the ranks did
    method = _shuffle_method()
    method.train()
    with torch.no_grad():
        shuffled = torch.cat([method.keys(views[order[r * local:(r + 1) * local]]) for r in range(WORLD)])
    expected = torch.empty_like(shuffled)
    expected[order] = shuffled
    got = torch.cat([r["shuffle_bn"]["keys"] for r in ranks])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    plain = torch.cat([r["shuffle_bn"]["plain"] for r in ranks])
    assert (plain - got).abs().max() > 1e-3  # the shuffle changes the keys: BatchNorm saw other images


def test_shuffled_bn_needs_several_processes() -> None:
    with pytest.raises(ConfigError, match="mocov2.shuffle_bn .* needs 2 or more"):
        _method(build_config({}, {**COMMON, **CASES["mocov2"], "mocov2.shuffle_bn": True}))
