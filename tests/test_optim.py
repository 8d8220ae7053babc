"""Pretraining optimizers (LARS groups, Adam unchanged), the warm-up + cosine lr schedule, and exact resume with it."""

import math
import signal
import threading

import numpy as np
import pytest
import torch
from torch import nn

from relssl.augment import AugmentConfig
from relssl.models import create_backbone
from relssl.optim import OptimConfig, build_optimizer, build_scheduler, lr_factor
from relssl.train import build_method
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import build_config
from relssl.train.run import build_backbone
from relssl.train.trainer import Trainer

# ----------------------------------------------------------------------------- lr_factor


def test_warmup_then_cosine_hand_computed():
    # 3 warm-up steps of 10: 1/3, 2/3, 1, then cosine over the remaining 7 steps down to 0 at step 10
    got = [lr_factor(s, 10, 3, "cosine") for s in range(11)]
    expected = [1 / 3, 2 / 3, 1.0] + [0.5 * (1 + math.cos(math.pi * j / 7)) for j in range(8)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert got[3] == 1.0 and got[10] == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(3 + 7 // 2, 10, 3, "cosine") > 0.5 > lr_factor(3 + 4, 10, 3, "cosine")
    assert lr_factor(25, 10, 3, "cosine") == pytest.approx(0.0, abs=1e-12)  # past the end stays at 0


def test_cosine_without_warmup_hand_computed():
    assert [lr_factor(s, 4, 0, "cosine") for s in range(5)] == pytest.approx(
        [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2, 0.0], abs=1e-12
    )


def test_constant_with_and_without_warmup():
    assert [lr_factor(s, 8, 4, "constant") for s in range(8)] == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 1])
    assert all(lr_factor(s, 8, 0, "constant") == 1.0 for s in range(8))


def test_build_scheduler_converts_warmup_epochs_to_steps():
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.4)
    sched = build_scheduler(OptimConfig(lr=0.4, schedule="cosine", warmup_epochs=0.5), opt, total_steps=12,
                            steps_per_epoch=4)  # 2 warm-up steps
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.2, 0.4] + [0.4 * 0.5 * (1 + math.cos(math.pi * j / 10)) for j in range(10)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- build_optimizer


def _byol(**overrides):
    cfg = build_config({}, {"method": "byol", "byol.projector_hidden": [16], "byol.projector_dim": 8,
                            "byol.predictor_hidden": 12, **overrides})
    torch.manual_seed(0)
    return cfg, build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)


def test_lars_puts_biases_and_norms_in_an_undecayed_group_and_skips_frozen_targets():
    from timm.optim import Lars

    cfg, method = _byol(**{"optim.name": "lars", "optim.lr": 0.3, "optim.weight_decay": 1e-6,
                           "optim.trust_coefficient": 0.02})
    opt = build_optimizer(cfg.optim, method)
    assert isinstance(opt, Lars)
    assert len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 1e-6 and no_decay["weight_decay"] == 0.0
    assert all(g["trust_coeff"] == 0.02 and g["lr"] == 0.3 and g["momentum"] == 0.9 for g in opt.param_groups)
    trainable = {id(p): (n, p) for n, p in method.named_parameters() if p.requires_grad}
    for p in decay["params"]:
        assert p.ndim > 1, trainable[id(p)][0]
    for p in no_decay["params"]:
        assert p.ndim <= 1, trainable[id(p)][0]
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == set(trainable)
    frozen = {id(p) for p in method.target.parameters()}
    assert frozen and not frozen & set(ids)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    norms = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    norm_ids = {id(p) for m in norms for p in m.parameters() if p.requires_grad}
    biases = {id(m.bias) for m in method.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None
              and m.bias.requires_grad}
    assert norm_ids and biases and norm_ids | biases == no_decay_ids  # exactly the BN scales/shifts and biases


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_lars_first_step_adapts_weights_and_not_biases(weight_decay):
    """One LARS step (You et al. 2017) in NumPy: w -= lr * eta |w| / (|g| + wd |w|) * (g + wd w); bias -= lr * g."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    cfg = OptimConfig(name="lars", lr=0.5, weight_decay=weight_decay, trust_coefficient=0.01)
    opt = build_optimizer(cfg, net)
    w0, b0 = net[0].weight.detach().numpy().astype(np.float64).copy(), net[0].bias.detach().numpy().copy()
    net(torch.randn(8, 4)).pow(3).sum().backward()
    g, gb = net[0].weight.grad.numpy().astype(np.float64), net[0].bias.grad.numpy()
    opt.step()
    ratio = 0.01 * np.linalg.norm(w0) / (np.linalg.norm(g) + weight_decay * np.linalg.norm(w0) + 1e-8)
    np.testing.assert_allclose(net[0].weight.detach().numpy(), w0 - 0.5 * ratio * (g + weight_decay * w0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net[0].bias.detach().numpy(), b0 - 0.5 * gb, rtol=1e-5, atol=1e-7)
    assert ratio < 0.1  # the adaptation is visible: plain SGD would have moved w much further


def test_adam_defaults_keep_paper1_single_group():
    torch.manual_seed(0)
    net_a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    net_b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    net_b.load_state_dict(net_a.state_dict())
    ours = build_optimizer(OptimConfig(), net_a)
    before = torch.optim.Adam(net_b.parameters(), lr=1e-3, weight_decay=0.0)  # the pre-LARS trainer's call
    assert type(ours) is torch.optim.Adam and len(ours.param_groups) == 1
    strip = lambda g: {k: v for k, v in g.items() if k != "params"}  # noqa: E731
    assert strip(ours.param_groups[0]) == strip(before.param_groups[0])
    assert [p.shape for p in ours.param_groups[0]["params"]] == [p.shape for p in net_b.parameters()]
    x = torch.randn(5, 3, 6, 6)
    for _ in range(3):
        for net, opt in ((net_a, ours), (net_b, before)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(a, b)


def test_adam_with_weight_decay_decays_every_parameter_unless_asked():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    opt = build_optimizer(OptimConfig(weight_decay=1e-4), net)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4
    opt = build_optimizer(OptimConfig(weight_decay=1e-4, exclude_bias_norm=True), net)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 3]  # Linear weight | bias, BN weight, BN bias


# ----------------------------------------------------------------------------- trainer with a schedule

STEPS, WARMUP_STEPS, BASE_LR = 7, 3, 0.05


def _expected_lr(step):
    """Written independently of lr_factor: (s+1)/W during warm-up, then half a cosine over the rest."""
    if step < WARMUP_STEPS:
        return BASE_LR * (step + 1) / WARMUP_STEPS
    return BASE_LR * 0.5 * (1 + math.cos(math.pi * (step - WARMUP_STEPS) / (STEPS - WARMUP_STEPS)))


def _arrays(n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, size=n)


def _trainer(tmp_path, name, method, run="run", **overrides):
    widths = {f"{method}.projector_hidden": [16], f"{method}.projector_dim": 8}
    if method == "byol":
        widths[f"{method}.predictor_hidden"] = 12
    if method == "mocov2":
        widths["mocov2.queue_size"] = 20  # wraps around within the run
        widths["mocov2.momentum"] = 0.9
    cfg = build_config({}, {"method": method, "train.batch_size": 8, "train.max_steps": STEPS,
                            "train.progress": False, "train.log_every": 1, "train.device": "cpu",
                            "optim.name": "sgd", "optim.lr": BASE_LR, "optim.schedule": "cosine",
                            "optim.warmup_epochs": 0.5, **widths, **overrides})  # 6 steps/epoch: 3 warm-up
    images, labels = _arrays()
    run_dir = tmp_path / run
    run_dir.mkdir(exist_ok=True)
    m = build_method(cfg, build_backbone(cfg), num_images=len(images), num_classes=3)
    return Trainer(cfg, m, images, labels, AugmentConfig(), torch.device("cpu"), run_dir)


def test_trainer_lr_follows_warmup_and_cosine(tmp_path):
    t = _trainer(tmp_path, "lr", "byol")
    seen = []
    original = t.method.training_step

    def spy(views, labels, indices):
        seen.append(t.optimizer.param_groups[0]["lr"])  # the lr the coming optimizer step will use
        return original(views, labels, indices)

    t.method.training_step = spy
    t.fit()
    assert seen == pytest.approx([_expected_lr(s) for s in range(STEPS)], rel=1e-12)
    assert seen[:3] == pytest.approx([BASE_LR / 3, 2 * BASE_LR / 3, BASE_LR])
    assert all(g["lr"] == pytest.approx(0.0, abs=1e-15) for g in t.optimizer.param_groups)  # after the last step
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt["scheduler"]["last_epoch"] == STEPS
    assert ckpt["scheduler"]["base_lrs"] == [BASE_LR] * len(t.optimizer.param_groups)


def _interrupted_then_resumed(tmp_path, method, stop_at=4, drop_scheduler=False):
    """Run STEPS steps, stopped by a real Ctrl-C (SIGINT) after `stop_at` steps, then resume in a new trainer."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGINT handling needs the main thread")
    first = _trainer(tmp_path, method, method, run="split")
    original = first.method.on_step_end

    def ctrl_c(step, total):
        original(step, total)
        if step == stop_at:
            signal.raise_signal(signal.SIGINT)

    first.method.on_step_end = ctrl_c
    first.fit()
    assert first.state.global_step == stop_at
    ckpt = load_checkpoint(tmp_path / "split")
    assert ckpt["train_state"]["global_step"] == stop_at
    assert ckpt["scheduler"]["last_epoch"] == stop_at
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(_expected_lr(stop_at), rel=1e-12)
    if drop_scheduler:
        del ckpt["scheduler"]
    resumed = _trainer(tmp_path, method, method, run="split")
    resumed.load_state_dict(ckpt)
    resumed.fit()
    assert resumed.state.global_step == STEPS
    return first, resumed


@pytest.mark.parametrize("method", ["mocov2", "byol"])
def test_interrupted_run_resumes_bit_for_bit_with_schedule_and_state(tmp_path, method):
    straight = _trainer(tmp_path, method, method, run="straight")
    straight.fit()
    first, resumed = _interrupted_then_resumed(tmp_path, method)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    stateful = [k for k in a if k.startswith("queue.") or k.startswith("target.")]
    assert stateful  # the queue (MoCo v2) and the momentum target are part of what matched
    if method == "mocov2":
        assert {"queue.keys", "queue.indices", "queue.ptr", "queue.count"} <= set(a)
        assert int(a["queue.count"]) == 20 and int(a["queue.ptr"]) == (STEPS * 8) % 20
        # the queue at the interruption was partly overwritten again after the resume
        assert not torch.equal(first.method.queue.keys, resumed.method.queue.keys)
    else:
        assert not torch.equal(first.method.target.target[0].layer1[0].weight,
                               resumed.method.target.target[0].layer1[0].weight)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    def losses(run):
        return [row.split(",")[3] for row in (tmp_path / run / "train_log.csv").read_text().splitlines()[1:]]

    assert losses("split") == losses("straight") and len(losses("straight")) == STEPS


def test_resume_without_scheduler_state_would_diverge(tmp_path):
    """Control for the test above: the scheduler state is what keeps the lr on its curve after a resume."""
    straight = _trainer(tmp_path, "byol", "byol", run="straight")
    straight.fit()
    _, resumed = _interrupted_then_resumed(tmp_path, "byol", drop_scheduler=True)
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
