"""Momentum copies average parameters only and keep their own BatchNorm statistics (MoCo's and BYOL's
official code); the statistics survive checkpoints; MoCo v2's symmetric form enqueues both views' keys."""

import numpy as np
import pytest
import torch
from torch import nn

from relssl.augment import AugmentConfig
from relssl.models import create_backbone
from relssl.models.momentum import MomentumCopy
from relssl.train import build_method
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import build_config
from relssl.train.run import build_backbone
from relssl.train.trainer import Trainer

BN_MOMENTUM = 0.1  # torch's default: running <- (1 - 0.1) running + 0.1 batch statistic


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _set(net: nn.Sequential, weight, bias, gamma, beta) -> None:
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(weight))
        net[0].bias.copy_(torch.tensor(bias))
        net[1].weight.copy_(torch.tensor(gamma))
        net[1].bias.copy_(torch.tensor(beta))


def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in module.named_buffers()}


def test_update_averages_parameters_by_hand_and_leaves_buffers_alone():
    online = _net()
    ema = MomentumCopy(online)
    _set(ema.target, [[1.0, 0.0, 2.0], [0.0, -1.0, 0.0]], [0.5, 0.0], [1.0, 1.0], [0.0, 0.0])
    _set(online, [[3.0, 2.0, 0.0], [1.0, 1.0, 1.0]], [-0.5, 1.0], [2.0, 0.0], [1.0, -1.0])
    online.train()
    online(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 5.0], [4.0, 4.0, -2.0]]))  # online BN statistics move
    target_buffers = _buffers(ema.target)

    ema.update(online, 0.75)

    # 0.75 * target + 0.25 * online, element by element
    assert torch.equal(ema.target[0].weight, torch.tensor([[1.5, 0.5, 1.5], [0.25, -0.5, 0.25]]))
    assert torch.equal(ema.target[0].bias, torch.tensor([0.25, 0.25]))
    assert torch.equal(ema.target[1].weight, torch.tensor([1.25, 0.75]))
    assert torch.equal(ema.target[1].bias, torch.tensor([0.25, -0.25]))
    # the buffers are the target's own: not copied from the online network (the old behaviour copied them)
    online_buffers = _buffers(online)
    assert int(online_buffers["1.num_batches_tracked"]) == 1
    for name, value in _buffers(ema.target).items():
        assert torch.equal(value, target_buffers[name]), name
        assert not torch.equal(value, online_buffers[name]), name


def test_target_statistics_move_with_its_own_train_mode_forward():
    online = _net()
    ema = MomentumCopy(online)
    ema.train()
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 5.0], [4.0, 4.0, -2.0], [0.5, -3.0, 1.0]])
    before = _buffers(ema.target)
    with torch.no_grad():
        ema(x)
    h = (x @ ema.target[0].weight.T + ema.target[0].bias).double().numpy()  # the BN layer's input
    mean = (1 - BN_MOMENTUM) * before["1.running_mean"].double().numpy() + BN_MOMENTUM * h.mean(0)
    var = (1 - BN_MOMENTUM) * before["1.running_var"].double().numpy() + BN_MOMENTUM * h.var(0, ddof=1)
    np.testing.assert_allclose(ema.target[1].running_mean.double().numpy(), mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ema.target[1].running_var.double().numpy(), var, rtol=0, atol=1e-6)
    assert int(ema.target[1].num_batches_tracked) == 1
    assert int(online[1].num_batches_tracked) == 0  # the online network did not run
    # an update does not undo them, and in eval mode the target normalises with its own statistics
    ema.update(online, 0.5)
    assert int(ema.target[1].num_batches_tracked) == 1
    ema.eval()
    with torch.no_grad():
        out = ema(x).double().numpy()
    g, b = ema.target[1].weight.double().numpy(), ema.target[1].bias.double().numpy()
    h = (x @ ema.target[0].weight.T + ema.target[0].bias).double().numpy()
    expected = (h - mean) / np.sqrt(var + ema.target[1].eps) * g + b
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- through the methods

M = 8
SMALL = {"byol": {"byol.projector_hidden": [16], "byol.projector_dim": 8, "byol.predictor_hidden": 12,
                  "byol.momentum": 0.9},
         "mocov2": {"mocov2.projector_hidden": [16], "mocov2.projector_dim": 8, "mocov2.queue_size": 64,
                    "mocov2.momentum": 0.9}}


def _method(name: str, **overrides):
    cfg = build_config({}, {"method": name, **SMALL[name], **overrides})
    torch.manual_seed(0)
    return build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)


def _views(seed: int) -> torch.Tensor:
    return torch.randn(2 * M, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _bn_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))}


def test_byol_target_keeps_its_own_statistics_through_steps_and_updates():
    method = _method("byol")
    method.train()
    target0 = _bn_buffers(method.target.target)
    for seed in (1, 2):
        method.training_step(_views(seed), torch.full((M,), -1), torch.arange(M))
        after_step = _bn_buffers(method.target.target)
        with torch.no_grad():  # an "optimizer step": the online network moves away from its EMA target
            for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
                p.add_(0.1 * torch.randn_like(p))
        method.on_step_end(seed, 10)
        assert all(torch.equal(after_step[k], v) for k, v in _bn_buffers(method.target.target).items())
    target = _bn_buffers(method.target.target)
    online = _bn_buffers(nn.Sequential(method.backbone, method.projector))
    assert target.keys() == online.keys() == target0.keys() and target
    assert all(not torch.equal(target[k], target0[k]) for k in target)  # the target's forwards moved them
    assert any(not torch.allclose(target[k], online[k]) for k in target)  # and they are not the online's


def _arrays(n=48, size=16):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, size=n)


def _trainer(tmp_path, max_steps, name):
    # a constant EMA coefficient: the cosine one depends on max_steps, which differs between the two runs
    cfg = build_config({}, {"method": "byol", **SMALL["byol"], "byol.momentum_schedule": "constant",
                            "train.batch_size": 8, "train.max_steps": max_steps,
                            "train.progress": False, "train.log_every": 2, "train.device": "cpu",
                            "eval.linear": False})
    images, labels = _arrays()
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    method = build_method(cfg, build_backbone(cfg), num_images=len(images), num_classes=3)
    return Trainer(cfg, method, images, labels, AugmentConfig(), torch.device("cpu"), run_dir)


def test_resume_restores_the_targets_own_statistics_exactly(tmp_path):
    straight = _trainer(tmp_path, 5, "straight")
    straight.fit()
    _trainer(tmp_path, 3, "split").fit()
    resumed = _trainer(tmp_path, 5, "split")
    resumed.load_state_dict(load_checkpoint(tmp_path / "split"))
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    target_stats = [k for k in a if k.startswith("target.") and k.endswith(("running_mean", "running_var",
                                                                            "num_batches_tracked"))]
    assert target_stats and a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    online_key = lambda k: k.replace("target.target.0.", "backbone.").replace("target.target.1.", "projector.")  # noqa: E731
    assert any(not torch.equal(a[k], a[online_key(k)]) for k in target_stats)  # the target's are its own


# ----------------------------------------------------------------------------- MoCo v2's queue


@pytest.mark.parametrize("symmetric", [False, True])
def test_mocov2_enqueues_the_keys_of_both_views_when_symmetric(symmetric):
    method = _method("mocov2", **{"mocov2.symmetric": symmetric})
    method.train()
    indices = torch.arange(M) + 10
    views = _views(3)
    method.training_step(views, torch.full((M,), -1), indices)
    with torch.no_grad():  # train-mode BN output depends on the batch only, so the keys are reproducible
        k1, k2 = method.target(views[:M]), method.target(views[M:])
    unit = lambda t: nn.functional.normalize(t, dim=1)  # noqa: E731
    expected = torch.cat((unit(k1), unit(k2))) if symmetric else unit(k2)
    expected_indices = torch.cat((indices, indices)) if symmetric else indices
    assert len(method.queue) == (2 * M if symmetric else M)
    torch.testing.assert_close(method.queue.features(), expected, rtol=0, atol=1e-6)
    assert torch.equal(method.queue.sample_indices(), expected_indices)
    method.training_step(_views(4), torch.full((M,), -1), indices + M)
    assert len(method.queue) == (4 * M if symmetric else 2 * M)
