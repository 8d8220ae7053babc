"""Paper 2's linear recipe: SGD / LARS with Nesterov momentum, cosine lr per step, linear lr scaling, top-5."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from relssl.config import load_yaml
from relssl.errors import ConfigError
from relssl.evaluate import LinearEvalConfig, linear_evaluation
from relssl.evaluate.linear import _optimizer, _set_cross_entropy_grad, cosine_lr
from relssl.train.config import build_config

REPO = Path(__file__).resolve().parents[1]


def _shipped_paper2(**changes: object) -> LinearEvalConfig:
    """configs/eval/linear_paper2.yaml as the probe's settings, with `eval.*` changes."""
    tree = load_yaml(REPO / "configs/eval/linear_paper2.yaml")
    return build_config(tree, {f"eval.{k}": v for k, v in changes.items()}).eval


@pytest.mark.parametrize(
    "changes",
    [
        {},  # the shipped recipe: LARS, cosine, lr 1.0 at batch 256, 90 epochs
        # SGD-Nesterov with the linear scaling rule: lr 1.0 at batch 4,096 is 0.0625 at 256
        {"optimizer": "sgd", "lr_reference_batch": 4096},
    ],
    ids=["lars", "sgd"],
)
def test_sgd_and_lars_with_cosine_separate_blobs(changes: dict, blobs) -> None:
    config = _shipped_paper2(**changes)
    assert (config.schedule, config.epochs, config.batch_size) == ("cosine", 90, 256)
    x, y, x_test, y_test = blobs(2000, 16, 8, separation=3.0, seed=0)
    result = linear_evaluation(x, y, x_test, y_test, config)
    assert result.top1 >= 99.0 and result.train_top1 >= 99.0
    assert result.top5 is not None and result.top5 >= result.top1  # 8 classes: top-5 reported under top5=True
    assert result.epochs == config.epochs


def test_cosine_schedule_matches_hand_computed_lr(monkeypatch: pytest.MonkeyPatch, blobs) -> None:
    seen: list[tuple[float, float]] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append((self.param_groups[0]["lr"], self.param_groups[1]["lr"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    x, y, x_test, y_test = blobs(100, 4, 3, separation=3.0, seed=1)
    # 100 samples in batches of 32: 4 steps per epoch (the last one of 4 samples), 5 epochs = 20 steps
    config = LinearEvalConfig(epochs=5, batch_size=32, optimizer="sgd", schedule="cosine", lr=0.8,
                              lr_reference_batch=64)
    linear_evaluation(x, y, x_test, y_test, config)
    assert len(seen) == 20
    assert config.effective_lr == pytest.approx(0.4)  # 0.8 * 32 / 64
    # lr_t = 0.4 * (1 + cos(pi * t / 20)) / 2, worked out by hand:
    hand = {0: 0.4, 5: 0.2 * (1 + math.sqrt(0.5)), 10: 0.2, 19: 0.2 * (1 - math.cos(math.pi / 20))}
    assert hand[5] == pytest.approx(0.341421356) and hand[19] == pytest.approx(0.002462331)
    for t, lr in hand.items():
        assert seen[t] == (pytest.approx(lr), pytest.approx(lr)), t  # weight and bias follow the same schedule
    assert all(a[0] > b[0] for a, b in zip(seen, seen[1:]))  # strictly decreasing, per step
    assert cosine_lr(0.4, 10, 20) == pytest.approx(0.2)


def test_constant_schedule_keeps_the_lr(monkeypatch: pytest.MonkeyPatch, blobs) -> None:
    seen: list[float] = []
    step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step",
                        lambda self, *a, **k: (seen.append(self.param_groups[0]["lr"]), step(self, *a, **k))[1])
    x, y, x_test, y_test = blobs(64, 4, 3, separation=3.0, seed=2)
    linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=3, batch_size=32, optimizer="sgd", lr=0.05))
    assert seen == [0.05] * 6


def test_lars_adapts_the_weight_but_not_the_bias() -> None:
    g = torch.Generator().manual_seed(3)
    weight = (torch.randn(5, 8, generator=g) * 0.3).requires_grad_()
    bias = torch.randn(5, generator=g).requires_grad_()
    config = LinearEvalConfig(optimizer="lars", lr=0.5, momentum=0.9, weight_decay=1e-4)
    optimizer = _optimizer(weight, bias, config)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0]
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    x, y = torch.randn(32, 8, generator=g), torch.randint(0, 5, (32,), generator=g)
    _set_cross_entropy_grad(weight, bias, x, y)
    grad_w = weight.grad + 1e-4 * w0  # L2 term on the weight only
    grad_b = bias.grad.clone()
    optimizer.step()
    # First step: the momentum buffer is the (scaled) gradient, Nesterov adds momentum * buffer.
    trust = 1e-3 * w0.norm() / (weight.grad.norm() + 1e-4 * w0.norm() + 1e-8)
    torch.testing.assert_close(weight.detach(), w0 - 0.5 * 1.9 * trust * grad_w)
    torch.testing.assert_close(bias.detach(), b0 - 0.5 * 1.9 * grad_b)  # plain SGD: no trust ratio, no decay


def test_sgd_is_nesterov_and_spares_the_bias_from_weight_decay() -> None:
    weight, bias = torch.zeros(3, 4, requires_grad=True), torch.zeros(3, requires_grad=True)
    optimizer = _optimizer(weight, bias, LinearEvalConfig(optimizer="sgd", momentum=0.8, weight_decay=0.1))
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(gr["nesterov"], gr["momentum"], gr["weight_decay"]) for gr in optimizer.param_groups] == [
        (True, 0.8, 0.1), (True, 0.8, 0.0)]


def test_paper1_defaults_are_unchanged() -> None:
    config = LinearEvalConfig()
    assert (config.optimizer, config.schedule, config.lr_reference_batch, config.top5) == ("adam", "constant", None, None)
    assert config.effective_lr == config.lr == 1e-3
    weight, bias = torch.zeros(3, 4, requires_grad=True), torch.zeros(3, requires_grad=True)
    adam = _optimizer(weight, bias, config)
    assert isinstance(adam, torch.optim.Adam) and len(adam.param_groups) == 1
    assert adam.param_groups[0]["lr"] == 1e-3 and adam.param_groups[0]["weight_decay"] == 0.0
    # the run config's defaults map onto exactly these settings
    run_eval = build_config().eval  # the run's eval section is the probe's config, extended
    assert isinstance(run_eval, LinearEvalConfig)
    assert {k: getattr(run_eval, k) for k in LinearEvalConfig.model_fields} == config.model_dump()
    shipped = build_config(load_yaml(REPO / "configs/eval/linear_paper1.yaml"))
    assert shipped.eval == build_config().eval


def test_top5_rule(blobs) -> None:
    x, y, x_test, y_test = blobs(300, 8, 7, separation=3.0, seed=4)
    assert linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=1)).top5 is None  # paper 1: > 10 classes
    assert linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=1, top5=True)).top5 is not None
    assert linear_evaluation(x, y % 5, x_test, y_test % 5, LinearEvalConfig(epochs=1, top5=True)).top5 is None
    x, y, x_test, y_test = blobs(300, 8, 12, separation=3.0, seed=4)
    assert linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=1, top5=False)).top5 is None


def test_paper2_config_file() -> None:
    cfg = build_config(load_yaml(REPO / "configs/eval/linear_paper2.yaml"))
    assert set(load_yaml(REPO / "configs/eval/linear_paper2.yaml")) == {"eval"}
    lin = cfg.eval
    assert (lin.epochs, lin.optimizer, lin.schedule, lin.momentum, lin.top5) == (90, "lars", "cosine", 0.9, True)
    assert (lin.lr, lin.lr_reference_batch, lin.batch_size) == (1.0, None, 256)
    assert lin.effective_lr == 1.0  # the paper's lr, not scaled to our batch
    assert _shipped_paper2(lr_reference_batch=4096).effective_lr == pytest.approx(1.0 * 256 / 4096)


@pytest.mark.parametrize(
    ("field", "value"),
    [("optimizer", "rmsprop"), ("schedule", "step"), ("momentum", 1.0), ("momentum", -0.1),
     ("lr_reference_batch", 0), ("top5", "yes")],
)
def test_linear_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        LinearEvalConfig(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ValidationError, match=r"momentum must be > 0 for sgd"):
        LinearEvalConfig(optimizer="sgd", momentum=0.0)
    assert LinearEvalConfig(momentum=0.0).momentum == 0.0  # Adam ignores it


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"eval.optimizer": "rmsprop"}, "eval.optimizer"),
        ({"eval.schedule": "step"}, "eval.schedule"),
        ({"eval.momentum": 1.5}, "eval.momentum"),
        ({"eval.optimizer": "lars", "eval.momentum": 0}, "eval.momentum"),
        ({"eval.lr_reference_batch": 0}, "eval.lr_reference_batch"),
        ({"eval.top5": "often"}, "eval.top5"),
        ({"eval.protocol": "semisup"}, "eval.protocol"),
    ],
)
def test_run_config_errors_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        build_config({}, overrides)


def test_lars_without_timm_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"config key 'eval.optimizer': .*install timm"):
        build_config({}, {"eval.optimizer": "lars"})
    assert build_config({}, {"eval.optimizer": "sgd"}).eval.optimizer == "sgd"
