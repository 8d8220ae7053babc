"""EMA coefficient schedule, the momentum (EMA) copy, the feature queue and nearest-neighbour retrieval."""

import collections
import math

import numpy as np
import pytest
import torch
from torch import nn

from relssl.methods.nnclr import nearest_in_queue
from relssl.methods.queue import FeatureQueue
from relssl.models.momentum import MomentumCopy, momentum_at

# ----------------------------------------------------------------------------- momentum_at


@pytest.mark.parametrize(
    "base,progress,expected",
    [
        (0.99, 0.0, 0.99),  # cos(0) = 1: starts at base
        (0.99, 0.5, 0.995),  # cos(pi/2) = 0: halfway between base and 1
        (0.99, 1.0, 1.0),  # cos(pi) = -1: ends at 1
        (0.996, 0.5, 0.998),
        (0.9, 0.25, 1 - 0.1 * (math.sqrt(2) / 2 + 1) / 2),
        (0.99, -0.5, 0.99),  # progress is clamped to [0, 1]
        (0.99, 1.7, 1.0),
    ],
)
def test_cosine_momentum_hand_computed(base, progress, expected):
    assert momentum_at(base, progress, "cosine") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_constant_momentum_stays_at_base(progress):
    assert momentum_at(0.999, progress, "constant") == 0.999


def test_cosine_is_the_default_and_rises_monotonically():
    values = [momentum_at(0.9, p / 10) for p in range(11)]
    assert values[0] == pytest.approx(0.9) and values[-1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_unknown_momentum_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown momentum schedule 'linear'; choose 'cosine' or 'constant'"):
        momentum_at(0.99, 0.5, "linear")


# ----------------------------------------------------------------------------- MomentumCopy


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


def test_copy_starts_equal_frozen_and_independent():
    online = _net()
    ema = MomentumCopy(online)
    for (name, t), (_, o) in zip(ema.target.named_parameters(), online.named_parameters()):
        assert torch.equal(t, o), name
        assert not t.requires_grad and o.requires_grad
        assert t.data_ptr() != o.data_ptr()  # a copy, not shared storage
    x = torch.randn(6, 5)
    online.eval(), ema.eval()
    assert torch.equal(ema(x), online(x))
    with torch.no_grad():
        online[0].weight.add_(1.0)
    assert not torch.equal(ema.target[0].weight, online[0].weight)


@pytest.mark.parametrize("m", [0.0, 0.5, 0.9, 0.999, 1.0])
def test_update_is_the_ema_formula_and_leaves_buffers_alone(m):
    online = _net()
    ema = MomentumCopy(online)
    # make online differ from the target: new weights and new BN running statistics
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()
    online(torch.randn(16, 5) * 3 + 1)  # BN running stats move
    before = {k: v.clone().double() for k, v in ema.target.named_parameters()}
    target_buffers = {k: v.clone() for k, v in ema.target.named_buffers()}
    online_params = {k: v.detach().clone().double() for k, v in online.named_parameters()}
    online_buffers = {k: v.clone() for k, v in online.named_buffers()}

    ema.update(online, m)

    for name, t in ema.target.named_parameters():
        expected = m * before[name] + (1 - m) * online_params[name]
        assert torch.allclose(t.double(), expected, rtol=0, atol=1e-6), name
        assert not t.requires_grad
    for name, buf in ema.target.named_buffers():  # the target's own statistics (tests/test_momentum_copy.py)
        assert torch.equal(buf, target_buffers[name]) and not torch.equal(buf, online_buffers[name]), name
    assert online_buffers["1.num_batches_tracked"].item() == 1
    # the online network is untouched
    for name, p in online.named_parameters():
        assert torch.equal(p.detach().double(), online_params[name]), name


def test_repeated_updates_converge_geometrically():
    online = _net()
    ema = MomentumCopy(online)
    with torch.no_grad():
        online[3].bias.fill_(1.0)
        ema.target[3].bias.fill_(0.0)
    for _ in range(3):
        ema.update(online, 0.5)
    assert torch.allclose(ema.target[3].bias, torch.full((3,), 1 - 0.5**3))


def test_update_refuses_another_architecture():
    ema = MomentumCopy(_net())
    with pytest.raises(ValueError, match="does not match the target's architecture"):
        ema.update(nn.Linear(5, 3), 0.9)


# ----------------------------------------------------------------------------- FeatureQueue


def _unit_rows(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_empty_queue_has_no_rows():
    q = FeatureQueue(5, 3)
    assert len(q) == 0
    assert q.features().shape == (0, 3) and q.sample_indices().shape == (0,)


def test_enqueue_normalises_and_stores_indices():
    q = FeatureQueue(5, 3)
    keys = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    q.enqueue(keys, torch.tensor([10, 11, 12]))
    assert len(q) == 3 and int(q.ptr) == 3
    expected = [[0.6, 0.8, 0.0], [0.0, 0.0, -1.0], [1 / math.sqrt(3)] * 3]
    assert q.features().dtype == torch.float32
    np.testing.assert_allclose(q.features().numpy(), expected, atol=1e-7)
    assert q.sample_indices().tolist() == [10, 11, 12]


def test_wrap_around_overwrites_the_oldest_rows_first():
    q = FeatureQueue(5, 2)
    a = torch.randn(3, 2)
    b = torch.randn(4, 2)
    q.enqueue(a, torch.tensor([0, 1, 2]))
    q.enqueue(b, torch.tensor([3, 4, 5, 6]))
    # slots 3, 4 take b[0], b[1]; then it wraps: slots 0, 1 take b[2], b[3]; slot 2 keeps a[2]
    assert q.sample_indices().tolist() == [5, 6, 2, 3, 4]
    expected = _unit_rows(torch.stack([b[2], b[3], a[2], b[0], b[1]]).numpy())
    np.testing.assert_allclose(q.features().numpy(), expected, atol=1e-6)
    assert len(q) == 5 and int(q.ptr) == 2  # count capped at the size


def test_batch_larger_than_the_queue_keeps_its_newest_rows():
    q = FeatureQueue(4, 2)
    q.enqueue(torch.randn(1, 2), torch.tensor([100]))
    big = torch.randn(7, 2)
    q.enqueue(big, torch.arange(7))
    assert len(q) == 4
    assert sorted(q.sample_indices().tolist()) == [3, 4, 5, 6]
    for row, idx in zip(q.features(), q.sample_indices()):
        np.testing.assert_allclose(row.numpy(), _unit_rows(big[idx : idx + 1].numpy())[0], atol=1e-6)
    # the next entry replaces the oldest of those (index 3)
    q.enqueue(torch.randn(1, 2), torch.tensor([7]))
    assert sorted(q.sample_indices().tolist()) == [4, 5, 6, 7]


def test_queue_always_holds_the_last_size_entries():
    """Random batch sizes (some larger than the queue) against a deque of the newest entries."""
    rng = np.random.default_rng(0)
    size = 6
    q = FeatureQueue(size, 3)
    ref = collections.deque(maxlen=size)
    next_index = 0
    for n in [2, 5, 1, 6, 9, 3, 4, 13, 1, 1, 2]:
        keys = rng.normal(size=(n, 3))
        idx = np.arange(next_index, next_index + n)
        next_index += n
        q.enqueue(torch.from_numpy(keys), torch.from_numpy(idx))
        ref.extend(zip(idx.tolist(), _unit_rows(keys)))
        assert len(q) == len(ref)
        stored = dict(zip(q.sample_indices().tolist(), q.features().numpy()))
        assert set(stored) == {i for i, _ in ref}
        for i, k in ref:
            np.testing.assert_allclose(stored[i], k, atol=1e-6)


def test_enqueue_mismatch_and_bad_sizes():
    q = FeatureQueue(4, 2)
    with pytest.raises(ValueError, match="enqueue: 3 keys but 2 indices"):
        q.enqueue(torch.randn(3, 2), torch.arange(2))
    assert len(q) == 0  # nothing was written
    with pytest.raises(ValueError, match="size >= 1 and dim >= 1; got size=0, dim=2"):
        FeatureQueue(0, 2)


def test_enqueue_detaches_keys():
    q = FeatureQueue(4, 2)
    keys = torch.randn(2, 2, requires_grad=True)
    q.enqueue(keys, torch.arange(2))
    assert not q.features().requires_grad


def test_state_dict_round_trip_continues_identically():
    a = FeatureQueue(5, 3)
    a.enqueue(torch.randn(4, 3), torch.arange(4))
    a.enqueue(torch.randn(3, 3), torch.arange(4, 7))
    state = a.state_dict()
    assert set(state) == {"keys", "indices", "ptr", "count"}
    b = FeatureQueue(5, 3)
    b.load_state_dict(state)
    assert len(b) == 5 and int(b.ptr) == int(a.ptr) == 2
    assert torch.equal(b.features(), a.features()) and torch.equal(b.sample_indices(), a.sample_indices())
    more = torch.randn(2, 3)
    a.enqueue(more, torch.tensor([7, 8]))
    b.enqueue(more, torch.tensor([7, 8]))
    assert torch.equal(b.keys, a.keys) and torch.equal(b.indices, a.indices)
    # a fresh queue that did not load the state writes elsewhere
    c = FeatureQueue(5, 3)
    c.enqueue(more, torch.tensor([7, 8]))
    assert not torch.equal(c.indices, a.indices)


# ----------------------------------------------------------------------------- nearest_in_queue


def test_nearest_in_queue_is_the_cosine_argmax():
    rng = np.random.default_rng(4)
    bank = rng.normal(size=(20, 6)) * rng.uniform(0.1, 10.0, size=(20, 1))  # widely varying norms
    z = rng.normal(size=(7, 6)) * rng.uniform(0.1, 10.0, size=(7, 1))
    q = FeatureQueue(32, 6)
    q.enqueue(torch.from_numpy(bank), torch.arange(20))
    feats, rows = nearest_in_queue(torch.tensor(z, dtype=torch.float32, requires_grad=True), q)
    # brute force: cosine of every pair, argmax per row
    cos = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in bank] for a in z])
    expected_rows = cos.argmax(axis=1)
    assert rows.tolist() == expected_rows.tolist()
    np.testing.assert_allclose(feats.numpy(), _unit_rows(bank[expected_rows]), atol=1e-6)
    assert not feats.requires_grad
    # a raw dot product would have chosen differently for at least one row (the test sees the difference)
    assert (z @ bank.T).argmax(axis=1).tolist() != expected_rows.tolist()


def test_nearest_in_an_empty_queue_is_the_input_itself():
    z = torch.tensor([[3.0, 4.0], [0.0, -5.0]])
    feats, rows = nearest_in_queue(z, FeatureQueue(8, 2))
    assert rows.tolist() == [-1, -1]
    assert torch.allclose(feats, torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
