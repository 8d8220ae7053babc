"""Tests for relssl.evaluate.knn against a NumPy reference, and `relssl eval knn`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relssl.evaluate.knn import knn_accuracy, knn_predict


def reference_knn(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, k: int, temperature: float,
                  weighting: str, num_classes: int) -> np.ndarray:
    """Straightforward per-sample kNN vote in float64."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    predictions = []
    for x in test:
        s = a @ (x / np.linalg.norm(x))
        nearest = np.argsort(-s, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_labels[j]] += np.exp(s[j] / temperature) if weighting == "exp" else 1.0
        predictions.append(np.argmax(votes))  # first maximum: ties go to the lowest class
    return np.array(predictions)


@pytest.mark.parametrize("weighting", ["exp", "majority"])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_knn_predict_matches_numpy_reference(weighting: str, k: int, blobs) -> None:
    x, y, x_test, _ = blobs(60, 6, 5, separation=5.0, spread=4.0, seed=k)  # overlapping classes: votes are not unanimous
    predicted = knn_predict(x, y, x_test, k=k, temperature=0.07, weighting=weighting, chunk=7)
    expected = reference_knn(x.double().numpy(), y.numpy(), x_test.double().numpy(), k, 0.07, weighting, 5)
    assert predicted.dtype == torch.long
    np.testing.assert_array_equal(predicted.numpy(), expected)


def test_knn_weighting_changes_the_vote() -> None:
    # One very close neighbour of class 1 against two farther ones of class 0.
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])
    labels = torch.tensor([1, 0, 0])
    test = torch.tensor([[1.0, 0.01]])
    assert knn_predict(train, labels, test, k=3, weighting="majority").item() == 0
    assert knn_predict(train, labels, test, k=3, weighting="exp", temperature=0.07).item() == 1


def test_knn_accuracy_on_separable_blobs(blobs) -> None:
    x, y, x_test, y_test = blobs(500, 16, 10, separation=5.0, spread=0.5, seed=0)
    for weighting in ("exp", "majority"):
        assert knn_accuracy(x, y, x_test, y_test, k=20, weighting=weighting) == pytest.approx(100.0)


def test_knn_rejects_bad_arguments() -> None:
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="weighting"):
        knn_predict(x, y, x, weighting="linear")
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(x, y, x, k=3, temperature=0.0)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(x, y, x, k=11)
    with pytest.raises(ValueError, match="negative"):
        knn_predict(x, torch.full((10,), -1), x, k=3)
    with pytest.raises(ValueError, match="num_classes"):
        knn_predict(x, y, x, k=3, num_classes=1)


def test_cli_knn_on_digits(digits_run, tmp_path, capsys) -> None:
    import json

    from relssl.cli import main

    for weighting in ("exp", "majority"):
        out_json = tmp_path / f"{weighting}.json"
        assert main(["eval", "knn", "--checkpoint", str(digits_run), "--no-progress", "--k", "5",
                     "--weighting", weighting, "--json", str(out_json)]) == 0
        assert json.loads(out_json.read_text())["top1"] > 50.0  # digits: far above the 10% of chance
    assert "kNN accuracy (k=5" in capsys.readouterr().out
