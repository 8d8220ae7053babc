"""Tests for relssl.evaluate: top-k metrics and the linear evaluation protocol."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from relssl.evaluate import LinearEvalConfig, LinearEvalResult, linear_evaluation, topk_accuracy, topk_correct
from relssl.evaluate.linear import _set_cross_entropy_grad, _standardize

# --- metrics ---------------------------------------------------------------------------------


def test_topk_accuracy_hand_computed() -> None:
    logits = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.9, 0.0, 0.3],  # ranking: 3, 1, 5, 2, 0, 4
            [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # ranking: 0, 1, 2, 3, 4, 5
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],  # ranking: 5, 4, 3, 2, 1, 0
            [0.3, 0.2, 0.1, 0.0, 0.6, 0.5],  # ranking: 4, 5, 0, 1, 2, 3
        ]
    )
    labels = torch.tensor([3, 4, 0, 3])
    # sample 0: rank 1 (top-1 hit); 1: rank 5; 2: rank 6 (miss); 3: rank 6 (miss)
    assert topk_accuracy(logits, labels, ks=(1, 2, 5)) == {1: 25.0, 2: 25.0, 5: 50.0}
    assert topk_correct(logits, labels, ks=(1, 5, 6)) == {1: 1, 5: 2, 6: 4}


def test_topk_accuracy_rejects_bad_input() -> None:
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="top-5"):
        topk_accuracy(logits, torch.zeros(3, dtype=torch.long), ks=(1, 5))
    with pytest.raises(ValueError, match="empty"):
        topk_accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), ks=(1,))
    with pytest.raises(ValueError, match="labels"):
        topk_accuracy(logits, torch.zeros(2, dtype=torch.long), ks=(1,))


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("batch_size", 0),
        ("weight_decay", -1e-4),
        ("standardize", "yes"),
        ("epochs", True),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        LinearEvalConfig(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize("seed", [-1, True, 1.5])
def test_bad_seed_is_refused(seed: object, blobs) -> None:
    x, y, x_test, y_test = blobs(40, 4, 2, separation=3.0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=1), seed=seed)


def test_config_defaults_are_the_papers() -> None:
    config = LinearEvalConfig()
    assert (config.epochs, config.lr, config.batch_size, config.weight_decay) == (100, 1e-3, 128, 0.0)
    assert config.standardize is False


# --- the protocol ------------------------------------------------------------------------------


def test_manual_gradient_matches_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(37, 8, generator=g), torch.randint(0, 5, (37,), generator=g)
    weight = torch.randn(5, 8, generator=g, requires_grad=True)
    bias = torch.randn(5, generator=g, requires_grad=True)
    F.cross_entropy(F.linear(x, weight, bias), y).backward()
    expected = weight.grad.clone(), bias.grad.clone()
    weight.grad = bias.grad = None
    _set_cross_entropy_grad(weight, bias, x, y)
    torch.testing.assert_close(weight.grad, expected[0])
    torch.testing.assert_close(bias.grad, expected[1])


def test_separable_blobs_reach_about_100_percent(blobs) -> None:
    x, y, x_test, y_test = blobs(1000, 16, 5, separation=5.0, seed=0)
    result = linear_evaluation(x, y, x_test, y_test)
    assert result.top1 >= 99.0
    assert result.train_top1 >= 99.0
    assert (result.epochs, result.num_classes, result.feature_dim, result.top5) == (100, 5, 16, None)


def test_random_labels_give_chance_test_accuracy() -> None:
    g = torch.Generator().manual_seed(1)
    x, x_test = torch.randn(2000, 32, generator=g), torch.randn(4000, 32, generator=g)
    y, y_test = torch.randint(0, 4, (2000,), generator=g), torch.randint(0, 4, (4000,), generator=g)
    result = linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=30))
    assert abs(result.top1 - 25.0) < 4.0  # 4000 test samples: one standard error is 0.7 points


def test_same_seed_same_result(blobs) -> None:
    x, y, x_test, y_test = blobs(600, 8, 4, separation=0.6, seed=2)
    config = LinearEvalConfig(epochs=10)
    first = linear_evaluation(x, y, x_test, y_test, config, seed=3)
    second = linear_evaluation(x, y, x_test, y_test, config, seed=3)
    assert first == second
    assert linear_evaluation(x, y, x_test, y_test, config, seed=4) != first
    assert 30.0 < first.top1 < 90.0  # a hard enough case that the equality above is not trivial


def test_top5_only_above_ten_classes(blobs) -> None:
    x, y, x_test, y_test = blobs(800, 16, 12, separation=3.0, seed=4)
    result = linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=5))
    assert result.num_classes == 12
    assert result.top5 is not None and result.top5 >= result.top1
    ten = linear_evaluation(x, y % 10, x_test, y_test % 10, LinearEvalConfig(epochs=1))
    assert ten.top5 is None


def test_num_classes_explicit_and_inferred(blobs) -> None:
    x, y, x_test, y_test = blobs(200, 4, 3, separation=3.0, seed=5)
    assert linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=1), num_classes=20).num_classes == 20
    with pytest.raises(ValueError, match="num_classes"):
        linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=1), num_classes=2)


def test_unlabeled_train_samples_are_an_error(blobs) -> None:
    x, y, x_test, y_test = blobs(100, 4, 3, separation=3.0, seed=6)
    y[::10] = -1
    with pytest.raises(ValueError, match=r"train_labels has 10 negative label\(s\).*unlabeled"):
        linear_evaluation(x, y, x_test, y_test)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(test_features=s["test_features"][:, :3]), "dimension"),
        (lambda s: s.update(train_labels=s["train_labels"].float()), "integer"),
        (lambda s: s.update(train_labels=s["train_labels"][:-1]), "train_labels must have shape"),
        (lambda s: s["train_features"].__setitem__((0, 0), float("nan")), "finite"),
        (lambda s: s.update(test_features=s["test_features"][:0], test_labels=s["test_labels"][:0]), "N >= 1"),
    ],
)
def test_bad_inputs_are_rejected(change, message: str, blobs) -> None:
    x, y, x_test, y_test = blobs(50, 4, 3, separation=3.0, seed=7)
    splits = dict(train_features=x, train_labels=y, test_features=x_test, test_labels=y_test)
    change(splits)
    with pytest.raises(ValueError, match=message):
        linear_evaluation(**splits, config=LinearEvalConfig(epochs=1))


def test_standardize_uses_train_statistics_only() -> None:
    # Train: classes at -1 and +1 on the first feature. Test: only class 1, so the test split's own
    # mean is +1; z-scoring it with its own statistics would centre it on the decision boundary.
    g = torch.Generator().manual_seed(8)
    y = torch.randint(0, 2, (1000,), generator=g)
    x = torch.randn(1000, 4, generator=g) * 0.1
    x[:, 0] += 2.0 * y - 1.0
    y_test = torch.ones(500, dtype=torch.long)
    x_test = torch.randn(500, 4, generator=g) * 0.1
    x_test[:, 0] += 1.0
    before = x.clone(), x_test.clone()
    result = linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(standardize=True))
    assert result.top1 == 100.0
    assert torch.equal(x, before[0]) and torch.equal(x_test, before[1])  # inputs untouched

    z_train, z_test = _standardize(x, x_test)
    torch.testing.assert_close(z_train.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z_train.std(0, correction=0), torch.ones(4), atol=1e-5, rtol=0)
    expected = (x_test - x.mean(0)) / x.std(0, correction=0)
    torch.testing.assert_close(z_test, expected, atol=1e-5, rtol=1e-5)
    assert z_test[:, 0].mean() > 0.9  # would be ~0 if the test split's own mean were used


def test_standardize_keeps_constant_features_finite() -> None:
    x = torch.ones(10, 3)
    x[:, 1] = torch.arange(10.0)
    z_train, z_test = _standardize(x, torch.full((2, 3), 2.0))
    assert torch.isfinite(z_train).all() and torch.isfinite(z_test).all()
    assert torch.equal(z_test[:, 0], torch.ones(2))  # (2 - 1) / 1: a constant column keeps scale 1


def test_standardize_rescues_tiny_features(blobs) -> None:
    # Observed behaviour: with features scaled by 1e-4, Adam at lr 1e-3 cannot grow the weights to
    # ~1e4 in 100 epochs, so the bias dominates and the raw probe stays near chance (20% here),
    # whereas the standardized probe is unaffected by the scale.
    x, y, x_test, y_test = blobs(2000, 16, 5, separation=1.0, seed=9)
    raw = linear_evaluation(x * 1e-4, y, x_test * 1e-4, y_test)
    standardized = linear_evaluation(x * 1e-4, y, x_test * 1e-4, y_test, LinearEvalConfig(standardize=True))
    unscaled = linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(standardize=True))
    assert raw.top1 < 35.0
    assert standardized.top1 > 95.0
    assert abs(standardized.top1 - unscaled.top1) <= 0.5  # z-scoring makes the probe scale-free


def test_result_to_dict_is_json_ready(blobs) -> None:
    x, y, x_test, y_test = blobs(100, 4, 3, separation=3.0, seed=10)
    result = linear_evaluation(x, y, x_test, y_test, LinearEvalConfig(epochs=2), progress=True)
    data = json.loads(json.dumps(result.to_dict()))
    assert LinearEvalResult(**data) == result
    assert set(data) == {"top1", "top5", "train_top1", "epochs", "num_classes", "feature_dim", "unreadable"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_linear_evaluation_on_cuda_matches_cpu_closely(blobs) -> None:
    x, y, x_test, y_test = blobs(1000, 16, 5, separation=1.0, seed=11)
    config = LinearEvalConfig(epochs=20)
    cpu = linear_evaluation(x, y, x_test, y_test, config)
    cuda = linear_evaluation(x, y, x_test, y_test, config, device="cuda")
    cuda_again = linear_evaluation(x.cuda(), y.cuda(), x_test.cuda(), y_test.cuda(), config, device="cuda")
    assert abs(cpu.top1 - cuda.top1) <= 1.0
    assert cuda == cuda_again
