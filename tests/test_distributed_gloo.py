"""Two CPU processes on the gloo backend: the queue is identical on every rank, gathered gradients reach the
local slice, and MoCo v3's in-batch positives sit at this rank's rows of the gathered keys."""

from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gloo_spawn import run_ranks

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this PyTorch build",
)

WORLD = 2
B = 4  # local batch (images per rank) for MoCo v3
QUEUE_SIZE, DIM = 6, 3
TAU = 0.5


def _rank_keys(rank, step):
    """Different keys (and dataset indices) on every rank and step."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(2, DIM, generator=g) * (rank + 1), torch.arange(2) + 100 * rank + 10 * step


def _mocov3_views(rank):
    g = torch.Generator().manual_seed(50 + rank)
    v1 = torch.randn(B, 3, 16, 16, generator=g)
    return torch.cat([v1, v1 + 0.3 * torch.randn(B, 3, 16, 16, generator=g)])


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    try:
        from relssl import distributed as rd
        from relssl.methods.queue import FeatureQueue
        from relssl.models import create_backbone
        from relssl.train import build_method
        from relssl.train.config import build_config

        res = {"rank": rd.rank(), "world": rd.world_size(), "distributed": rd.is_distributed(),
               "slice": (rd.rank_slice(B).start, rd.rank_slice(B).stop)}

        # the queue: every rank enqueues its own keys, three times (12 rows into 6: it wraps)
        queue = FeatureQueue(QUEUE_SIZE, DIM)
        for step in range(3):
            queue.enqueue(*_rank_keys(rank, step))
        res["queue_keys"], res["queue_indices"] = queue.keys.clone(), queue.indices.clone()
        res["queue_ptr"], res["queue_count"] = int(queue.ptr), int(queue.count)

        # gather_with_grad: forward in rank order, gradient of this rank's loss flows to every rank's slice
        x = (torch.arange(6.0).view(3, 2) + 100 * rank).requires_grad_(True)
        gathered = rd.gather_with_grad(x)
        weights = torch.randn(WORLD * 3, 2, generator=torch.Generator().manual_seed(7 + rank))
        (gathered * weights).sum().backward()
        res["gathered"], res["x_grad"], res["weights"] = gathered.detach(), x.grad.clone(), weights

        # MoCo v3: same initial weights on both ranks (as DDP guarantees), different local views
        cfg = build_config({}, {"method": "mocov3", "mocov3.projector_hidden": [16], "mocov3.projector_dim": 8,
                                "mocov3.predictor_hidden": 12, "mocov3.temperature": TAU})
        torch.manual_seed(0)
        method = build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)
        views = _mocov3_views(rank)
        out = method.training_step(views, torch.full((B,), -1), torch.arange(B))
        res["loss"], res["pos_acc"] = out.loss.item(), out.metrics["pos_acc"].item()
        with torch.no_grad():  # this rank's own q and k, recomputed the same way (BN statistics are per rank)
            res["q1"], res["q2"] = (method.predictor(method.project(v)) for v in views.chunk(2))
            res["k1"], res["k2"] = (method.target(v) for v in views.chunk(2))
        torch.save(res, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    return run_ranks(_worker, tmp, WORLD)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_ranks_see_the_process_group(results):
    for r, res in enumerate(results):
        assert res["rank"] == r and res["world"] == WORLD and res["distributed"]
        assert res["slice"] == (r * B, (r + 1) * B)


def test_queue_is_identical_on_every_rank_and_rank_ordered(results):
    a, b = results
    assert torch.equal(a["queue_keys"], b["queue_keys"]) and torch.equal(a["queue_indices"], b["queue_indices"])
    assert a["queue_ptr"] == b["queue_ptr"] == (3 * WORLD * 2) % QUEUE_SIZE
    assert a["queue_count"] == b["queue_count"] == QUEUE_SIZE
    # reference ring: each step writes [rank 0's 2 keys, rank 1's 2 keys] at the pointer
    keys, indices, ptr = np.zeros((QUEUE_SIZE, DIM)), np.full(QUEUE_SIZE, -1), 0
    for step in range(3):
        batch = [_rank_keys(r, step) for r in range(WORLD)]
        for k, i in zip(np.concatenate([_unit(k.numpy()) for k, _ in batch]),
                        np.concatenate([i.numpy() for _, i in batch])):
            keys[ptr], indices[ptr] = k, i
            ptr = (ptr + 1) % QUEUE_SIZE
    assert a["queue_indices"].tolist() == indices.tolist()
    np.testing.assert_allclose(a["queue_keys"].numpy(), keys, atol=1e-6)
    # by hand: step 0 fills slots 0-3, step 1 writes 4, 5, 0, 1 (rank 0's 10, 11 then rank 1's 110, 111),
    # step 2 writes 2-5 (rank 0's 20, 21 before rank 1's 120, 121)
    assert a["queue_indices"].tolist() == [110, 111, 20, 21, 120, 121]


def test_gather_with_grad_concatenates_in_rank_order_and_sums_gradients_into_the_local_slice(results):
    expected = torch.cat([torch.arange(6.0).view(3, 2) + 100 * r for r in range(WORLD)])
    for r, res in enumerate(results):
        assert torch.equal(res["gathered"], expected)
        # d(sum over ranks of loss_r)/dx_r: every rank's weights at this rank's rows, summed (as DDP then averages)
        ref = sum(results[o]["weights"][3 * r: 3 * r + 3] for o in range(WORLD))
        assert torch.allclose(res["x_grad"], ref, atol=1e-6)
        # not just the local loss's own gradient
        assert not torch.allclose(res["x_grad"], res["weights"][3 * r: 3 * r + 3])


def _ctr(q, keys, offset):
    logits = _unit(q) @ _unit(keys).T / TAU
    return np.mean([np.log(np.exp(row).sum()) - row[offset + b] for b, row in enumerate(logits)])


def test_mocov3_positives_are_this_ranks_rows_of_the_gathered_keys(results):
    k1 = np.concatenate([res["k1"].double().numpy() for res in results])
    k2 = np.concatenate([res["k2"].double().numpy() for res in results])
    assert k1.shape == (WORLD * B, 8)
    for r, res in enumerate(results):
        q1, q2 = res["q1"].double().numpy(), res["q2"].double().numpy()
        ref = 2 * TAU * (_ctr(q1, k2, r * B) + _ctr(q2, k1, r * B))
        assert res["loss"] == pytest.approx(ref, rel=1e-5)
        wrong = 2 * TAU * (_ctr(q1, k2, (1 - r) * B) + _ctr(q2, k1, (1 - r) * B))
        assert abs(res["loss"] - wrong) > 1e-3  # the offset is visible in the loss
        hits = (_unit(q1) @ _unit(k2).T).argmax(1) == np.arange(B) + r * B
        assert res["pos_acc"] == pytest.approx(100.0 * hits.mean())
    assert results[0]["loss"] != pytest.approx(results[1]["loss"])  # different local views, different losses
