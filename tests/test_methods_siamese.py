"""The two-view baselines (MoCo v2/v3, BYOL, SimSiam, NNCLR): steps, frozen EMA targets, queues, losses vs
independent computations, and NNCLR as RCL with one criterion."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relssl.errors import ConfigError
from relssl.losses import relative_contrastive_loss
from relssl.methods.byol import BYOL
from relssl.methods.mocov2 import MoCoV2
from relssl.methods.mocov3 import MoCoV3
from relssl.methods.nnclr import NNCLR, NNCLRConfig
from relssl.methods.simsiam import SimSiam
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

M = 8  # images per batch
SMALL = {
    "mocov2": {"mocov2.projector_hidden": [16], "mocov2.projector_dim": 8, "mocov2.queue_size": 32,
               "mocov2.momentum": 0.9},
    "mocov3": {"mocov3.projector_hidden": [16], "mocov3.projector_dim": 8, "mocov3.predictor_hidden": 12,
               "mocov3.momentum": 0.9},
    "byol": {"byol.projector_hidden": [16], "byol.projector_dim": 8, "byol.predictor_hidden": 12,
             "byol.momentum": 0.9},
    "simsiam": {"simsiam.projector_hidden": [16], "simsiam.projector_dim": 8, "simsiam.predictor_hidden": 4},
    "nnclr": {"nnclr.projector_hidden": [16], "nnclr.projector_dim": 8, "nnclr.predictor_hidden": 12,
              "nnclr.queue_size": 32},
}
CLASSES = {"mocov2": MoCoV2, "mocov3": MoCoV3, "byol": BYOL, "simsiam": SimSiam, "nnclr": NNCLR}
NAMES = list(SMALL)
WITH_TARGET = {"mocov2": {}, "mocov3": {}, "byol": {}, "nnclr": {"nnclr.momentum": 0.9}}


def _method(name, **overrides):
    cfg = build_config({}, {"method": name, **SMALL[name], **overrides})
    torch.manual_seed(0)
    return build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)


def _views(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2 * M, 3, 16, 16, generator=g)


def _step(method, seed, indices=None):
    indices = torch.arange(M) + 100 * seed if indices is None else indices
    return method.training_step(_views(seed), torch.full((M,), -1), indices)


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np(t):
    return t.detach().double().numpy()


# ----------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_the_method_with_the_configured_widths(name):
    method = _method(name)
    assert type(method) is CLASSES[name] and method.num_views == 2
    assert method.projector.out_dim == 8
    assert (method.target is not None) == (name in ("mocov2", "mocov3", "byol"))
    if name in ("mocov2", "nnclr"):
        assert method.queue.size == 32 and method.queue.keys.shape == (32, 8)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_gives_a_finite_scalar_loss_metrics_and_online_gradients(name):
    method = _method(name)
    _step(method, 1)  # fills the queues, so MoCo v2 has negatives on the next step
    method.zero_grad(set_to_none=True)
    out = _step(method, 2)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.metrics) == set(method.metric_names) and method.metric_names
    for key, value in out.metrics.items():
        assert value.dim() == 0 and torch.isfinite(value) and not value.requires_grad, key
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name,extra", list(WITH_TARGET.items()))
def test_backward_leaves_every_target_parameter_without_grad(name, extra):
    method = _method(name, **extra)
    assert method.target is not None
    _step(method, 1)
    out = _step(method, 2)
    out.loss.backward()
    target_params = list(method.target.parameters())
    assert len(target_params) == len(list(method.backbone.parameters())) + len(list(method.projector.parameters()))
    for p in target_params:
        assert p.grad is None and not p.requires_grad
    assert all(p.grad is not None for p in method.projector.parameters())


# m at step 5 of 10 (progress 0.5), base 0.9: cosine 1 - 0.1 * (cos(pi/2) + 1) / 2 = 0.95; constant 0.9
EXPECTED_M = {"mocov2": 0.9, "mocov3": 0.95, "byol": 0.95, "nnclr": 0.95}


@pytest.mark.parametrize("name,extra", list(WITH_TARGET.items()))
def test_on_step_end_moves_the_target_by_the_momentum_formula(name, extra):
    method = _method(name, **extra)
    _step(method, 1)  # BN running statistics of the online network move
    with torch.no_grad():  # an "optimizer step" on the online network
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    online = [_np(p) for p in list(method.backbone.parameters()) + list(method.projector.parameters())]
    target_buffers = [b.clone() for b in method.target.buffers()]
    before = [_np(p) for p in method.target.parameters()]
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(before, online))

    method.on_step_end(5, 10)

    m = EXPECTED_M[name]
    after = [_np(p) for p in method.target.parameters()]
    for t_old, o, t_new in zip(before, online, after):
        np.testing.assert_allclose(t_new, m * t_old + (1 - m) * o, rtol=0, atol=1e-6)
    # the update leaves the target's own BatchNorm statistics alone (tests/test_momentum_copy.py)
    for t_buf, before_buf in zip(method.target.buffers(), target_buffers):
        assert torch.equal(t_buf, before_buf)
    # the other schedule's coefficient would have given a different target: the check sees m
    wrong = 0.9 if m == 0.95 else 0.95
    assert any(np.abs(t_new - (wrong * t_old + (1 - wrong) * o)).max() > 1e-5
               for t_old, o, t_new in zip(before, online, after))


def test_simsiam_has_no_target_and_on_step_end_changes_nothing():
    method = _method("simsiam")
    assert method.target is None
    state = {k: v.clone() for k, v in method.state_dict().items()}
    method.on_step_end(1, 10)
    assert all(torch.equal(v, method.state_dict()[k]) for k, v in state.items())


# ----------------------------------------------------------------------------- queues


def test_mocov2_enqueues_this_batchs_normalised_keys_of_view_two():
    method = _method("mocov2")
    assert len(method.queue) == 0
    out1 = _step(method, 1, torch.arange(M))
    assert out1.loss.item() == pytest.approx(0.0, abs=1e-6)  # no negatives yet: log(e^x / e^x)
    assert len(method.queue) == M
    _step(method, 2, torch.arange(M, 2 * M))
    assert len(method.queue) == 2 * M
    assert method.queue.sample_indices().tolist() == list(range(2 * M))
    with torch.no_grad():
        k2 = method.target(_views(2)[M:])
    np.testing.assert_allclose(_np(method.queue.features()[M:]), _unit(_np(k2)), atol=1e-6)
    for seed in (3, 4, 5):
        _step(method, seed)
    assert len(method.queue) == 32  # capped at queue_size


def test_mocov2_loss_is_info_nce_against_the_queue_before_the_step():
    method = _method("mocov2", **{"mocov2.temperature": 0.3})
    _step(method, 1)
    _step(method, 2)
    bank = _np(method.queue.features())
    out = _step(method, 3)
    views = _views(3)
    with torch.no_grad():
        q, k = _unit(_np(method.project(views[:M]))), _unit(_np(method.target(views[M:])))
    ref = []
    for b in range(M):
        pos = math.exp(q[b] @ k[b] / 0.3)
        ref.append(-math.log(pos / (pos + sum(math.exp(q[b] @ n / 0.3) for n in bank))))
    assert out.loss.item() == pytest.approx(np.mean(ref), rel=1e-5)
    best_neg = (q @ bank.T).max(axis=1)
    assert out.metrics["pos_acc"].item() == pytest.approx(100.0 * np.mean((q * k).sum(1) > best_neg))


def test_nnclr_enqueues_view_one_embeddings():
    method = _method("nnclr")
    _step(method, 1, torch.arange(M))
    assert len(method.queue) == M
    with torch.no_grad():
        z1 = method.project(_views(1)[:M])
    np.testing.assert_allclose(_np(method.queue.features()), _unit(_np(z1)), atol=1e-6)
    _step(method, 2, torch.arange(M, 2 * M))
    assert len(method.queue) == 2 * M
    assert method.queue.sample_indices().tolist() == list(range(2 * M))


# ----------------------------------------------------------------------------- losses vs independent computations


def test_byol_loss_is_the_sum_of_two_2_minus_2cos_terms():
    method = _method("byol")
    out = _step(method, 1)
    views = _views(1)
    with torch.no_grad():
        p1, p2 = (_np(method.predictor(method.project(v))) for v in (views[:M], views[M:]))
        z1, z2 = (_np(method.target(v)) for v in (views[:M], views[M:]))
    cos = lambda a, b: (_unit(a) * _unit(b)).sum(1)  # noqa: E731
    ref = np.mean(2 - 2 * cos(p1, z2)) + np.mean(2 - 2 * cos(p2, z1))
    assert out.loss.item() == pytest.approx(ref, rel=1e-5)
    assert 0.0 <= out.loss.item() <= 8.0
    assert out.metrics["cosine"].item() == pytest.approx((cos(p1, z2).mean() + cos(p2, z1).mean()) / 2, rel=1e-5)


def test_mocov3_loss_is_two_tau_times_both_in_batch_terms_and_accuracy_uses_cosines():
    method = _method("mocov3", **{"mocov3.temperature": 0.5})
    views = _views(13)  # view 2 = view 1 + noise, so some queries find their key (seed picked so cosine and raw-dot hits differ)
    views[M:] = views[:M] + 0.3 * torch.randn(M, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = method.training_step(views, torch.full((M,), -1), torch.arange(M))
    with torch.no_grad():
        raw_q1, raw_q2 = (_np(method.predictor(method.project(v))) for v in (views[:M], views[M:]))
        raw_k1, raw_k2 = (_np(method.target(v)) for v in (views[:M], views[M:]))
    q1, q2, k1, k2 = (_unit(x) for x in (raw_q1, raw_q2, raw_k1, raw_k2))

    def ctr(q, k):
        logits = q @ k.T / 0.5
        return np.mean([np.log(np.exp(row).sum()) - row[b] for b, row in enumerate(logits)])

    # MoCo v3: each symmetric term times 2 tau, summed
    assert out.loss.item() == pytest.approx(2 * 0.5 * (ctr(q1, k2) + ctr(q2, k1)), rel=1e-5)
    acc = 100.0 * np.mean((q1 @ k2.T).argmax(1) == np.arange(M))
    assert out.metrics["pos_acc"].item() == pytest.approx(acc)
    # keys are not unit vectors: an accuracy from raw dot products would differ here (it used to)
    assert acc != 100.0 * np.mean((raw_q1 @ raw_k2.T).argmax(1) == np.arange(M))


def test_simsiam_loss_and_stop_gradient():
    method = _method("simsiam")
    views = _views(5)
    out = method.training_step(views, torch.full((M,), -1), torch.arange(M))
    params = [p for p in method.parameters() if p.requires_grad]
    got = torch.autograd.grad(out.loss, params)

    z1, z2 = method.project(views[:M]), method.project(views[M:])  # one forward per view, as SimSiam's code
    p1, p2 = method.predictor(z1), method.predictor(z2)
    cos = F.cosine_similarity
    stopped = -(cos(p1, z2.detach()).mean() + cos(p2, z1.detach()).mean()) / 2
    both_ways = -(cos(p1, z2).mean() + cos(p2, z1).mean()) / 2
    assert out.loss.item() == pytest.approx(stopped.item(), rel=1e-5)
    pz = [(_np(p1), _np(z2)), (_np(p2), _np(z1))]
    assert out.loss.item() == pytest.approx(-np.mean([(_unit(p) * _unit(z)).sum(1).mean() for p, z in pz]), rel=1e-5)
    ref_stopped = torch.autograd.grad(stopped, params, retain_graph=True)
    ref_both = torch.autograd.grad(both_ways, params)
    for a, b in zip(got, ref_stopped):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # without the stop-gradient the encoder's gradient is different: the comparison above can fail
    assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(got, ref_both))
    assert out.metrics["cosine"].item() == pytest.approx(-stopped.item(), rel=1e-5)


def test_simsiam_gradient_reaching_z_comes_only_through_the_predictor():
    """A hook on the projector output: the gradient there is exactly d loss / d p backpropagated through
    the predictor, with nothing from the z branch of the cosine."""
    method = _method("simsiam")
    views = _views(6)
    captured, calls = {}, []

    def grab_gradient(module, inputs, output):  # one projector call per view: z1 first, then z2
        slot = len(calls)
        calls.append(slot)
        output.register_hook(lambda g: captured.__setitem__(slot, g.clone()))

    handle = method.projector.register_forward_hook(grab_gradient)
    out = method.training_step(views, torch.full((M,), -1), torch.arange(M))
    out.loss.backward()
    handle.remove()
    assert sorted(captured) == [0, 1]

    z1 = method.project(views[:M]).detach().requires_grad_(True)
    z2 = method.project(views[M:]).detach().requires_grad_(True)
    p1, p2 = method.predictor(z1), method.predictor(z2)
    via_predictor = -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2
    expected = torch.autograd.grad(via_predictor, [z1, z2])
    for slot in (0, 1):
        assert torch.allclose(captured[slot], expected[slot], rtol=1e-4, atol=1e-8)


def test_nnclr_neighbours_form_uses_the_nearest_neighbour_as_in_batch_positive():
    """`softmax_over: neighbours` (the default, Eq. 2, is tested in tests/test_nnclr_eq2.py)."""
    method = _method("nnclr", **{"nnclr.temperature": 0.2, "nnclr.softmax_over": "neighbours"})
    _step(method, 1)
    _step(method, 2)
    bank = _np(method.queue.features())
    out = _step(method, 3)
    views = _views(3)
    with torch.no_grad():
        z1, z2 = (method.project(v) for v in (views[:M], views[M:]))
        p1, p2 = _unit(_np(method.predictor(z1))), _unit(_np(method.predictor(z2)))
    nn = lambda z: bank[(_unit(_np(z)) @ bank.T).argmax(1)]  # noqa: E731
    nn1, nn2 = nn(z1), nn(z2)

    def ctr(p, pos):  # in-batch: query b's positive is pos[b], the other rows negatives
        logits = p @ pos.T / 0.2
        return np.mean([np.log(np.exp(row).sum()) - row[b] for b, row in enumerate(logits)])

    assert out.loss.item() == pytest.approx((ctr(p2, nn1) + ctr(p1, nn2)) / 2, rel=1e-5)


def test_nnclr_with_queue_negatives_and_momentum_is_rcl_with_one_criterion():
    """RCL (Tang et al. 2022) with H = 1, every pair positive and z' = the nearest neighbour is NNCLR."""
    method = _method("nnclr", **{"nnclr.negatives": "queue", "nnclr.momentum": 0.9, "nnclr.temperature": 0.1})
    _step(method, 1)
    method.on_step_end(1, 10)
    _step(method, 2)
    method.on_step_end(2, 10)
    with torch.no_grad():  # an optimizer step moves the online encoder away from its EMA target
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    queue = method.queue.features().clone()
    assert len(queue) == 2 * M
    method.zero_grad(set_to_none=True)
    out = _step(method, 3)
    out.loss.backward()
    got_grads = [p.grad.clone() for p in method.predictor.parameters()]

    views = _views(3)
    z1, z2 = method.project(views[:M]), method.project(views[M:])
    p1, p2 = method.predictor(z1), method.predictor(z2)
    with torch.no_grad():
        k1, k2 = method.target(views[:M]), method.target(views[M:])
    # nearest neighbours by brute force in NumPy: argmax of cosine between the key and every queue row
    qn = _np(queue)
    rows1 = (_unit(_np(k1)) @ qn.T).argmax(1)
    rows2 = (_unit(_np(k2)) @ qn.T).argmax(1)
    nn1, nn2 = queue[torch.from_numpy(rows1)], queue[torch.from_numpy(rows2)]
    positive = torch.ones(M, 1, dtype=torch.bool)
    rcl = (relative_contrastive_loss([p2], nn1, queue, positive, tau=0.1)
           + relative_contrastive_loss([p1], nn2, queue, positive, tau=0.1)) / 2
    assert out.loss.item() == pytest.approx(rcl.item(), rel=1e-5)
    ref_grads = torch.autograd.grad(rcl, list(method.predictor.parameters()))
    for a, b in zip(got_grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    # keys come from the momentum target, which by now differs from the online encoder
    assert not torch.allclose(k1, z1.detach(), atol=1e-4)
    # and with a negative criterion the loss would differ: the comparison is not vacuous
    neg = (relative_contrastive_loss([p2], nn1, queue, ~positive, tau=0.1)
           + relative_contrastive_loss([p1], nn2, queue, ~positive, tau=0.1)) / 2
    assert abs(neg.item() - out.loss.item()) > 1e-3


# ----------------------------------------------------------------------------- configuration errors


def test_unknown_key_under_byol_is_named():
    with pytest.raises(ConfigError, match=r"config key 'byol\.predictor_width': unknown key"):
        build_config({}, {"method": "byol", "byol.predictor_width": 64})


def test_nnclr_negatives_must_be_batch_or_queue():
    with pytest.raises(ConfigError, match=r"config key 'nnclr\.negatives'.*'batch' or 'queue'"):
        build_config({}, {"method": "nnclr", "nnclr.negatives": "foo"})
    with pytest.raises(ValueError, match="negatives"):
        NNCLR(create_backbone("conv4"), NNCLRConfig(negatives="foo"))


@pytest.mark.parametrize("key,value", [("byol.momentum", 1.0), ("mocov2.momentum", -0.1),
                                       ("mocov3.momentum_schedule", "linear"), ("nnclr.queue_size", 0),
                                       ("simsiam.projector_hidden", [16, 0]), ("mocov2.temperature", 0)])
def test_bad_values_name_their_key(key, value):
    name = key.split(".")[0]
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        build_config({}, {"method": name, key: value})
