"""Tests for relssl.evaluate.retrieval (cosine top-k, retrieval accuracy) and `relssl eval retrieval`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relssl.evaluate.retrieval import cosine_topk, retrieval_accuracy


def reference_topk(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float64: every similarity, a full sort."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = q @ g.T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 4096])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_cosine_topk_matches_brute_force(chunk: int, exclude_self: bool) -> None:
    rng = np.random.default_rng(chunk)
    gallery = rng.normal(size=(23, 5)) * rng.uniform(0.1, 10, size=(23, 1))  # norms must not matter
    queries = gallery if exclude_self else rng.normal(size=(11, 5))
    for k in (1, 4, 22 if exclude_self else 23):
        sims, idx = cosine_topk(torch.tensor(queries, dtype=torch.float32), torch.tensor(gallery, dtype=torch.float32),
                                k, exclude_self=exclude_self, chunk=chunk)
        ref_sims, ref_idx = reference_topk(queries, gallery, k, exclude_self)
        assert sims.shape == idx.shape == (len(queries), k)
        assert idx.dtype == torch.long
        np.testing.assert_array_equal(idx.numpy(), ref_idx)
        np.testing.assert_allclose(sims.numpy(), ref_sims, atol=1e-6)
        if exclude_self:
            assert not (idx == torch.arange(len(queries))[:, None]).any()


def test_cosine_topk_identical_rows_find_themselves_first() -> None:
    x = torch.randn(10, 4)
    sims, idx = cosine_topk(x, x, 1, chunk=3)
    assert torch.equal(idx[:, 0], torch.arange(10))
    assert torch.allclose(sims[:, 0], torch.ones(10), atol=1e-6)


def test_cosine_topk_rejects_bad_arguments() -> None:
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match="k must be"):
        cosine_topk(x, x, 6)
    with pytest.raises(ValueError, match="k must be"):
        cosine_topk(x, x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="exclude_self"):
        cosine_topk(x[:4], x, 2, exclude_self=True)
    with pytest.raises(ValueError, match="dimension"):
        cosine_topk(x, torch.randn(5, 4), 2)
    with pytest.raises(ValueError, match="finite"):
        cosine_topk(x, torch.full((5, 3), float("nan")), 2)
    with pytest.raises(ValueError, match="chunk"):
        cosine_topk(x, x, 2, chunk=0)


def test_retrieval_accuracy_hand_computed() -> None:
    gallery_labels = torch.tensor([0, 0, 1, 1, 2])
    query_labels = torch.tensor([0, 1, 2])
    indices = torch.tensor([[0, 1, 3], [2, 0, 4], [0, 1, 2]])
    # query 0 (label 0): 2 of 3 neighbours are label 0; query 1: 1 of 3 is label 1; query 2: none is label 2
    assert retrieval_accuracy(query_labels, gallery_labels, indices) == pytest.approx(100 * (2 / 3 + 1 / 3 + 0) / 3)
    assert retrieval_accuracy(query_labels[:1], gallery_labels, torch.tensor([[0, 1]])) == 100.0


def test_retrieval_accuracy_rejects_out_of_range_indices() -> None:
    with pytest.raises(ValueError, match="rows of the gallery"):
        retrieval_accuracy(torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([[2]]))
    with pytest.raises(ValueError, match="query_labels"):
        retrieval_accuracy(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([[1]]))


# --- command line ----------------------------------------------------------------------------


def test_cli_retrieval_writes_grid_and_accuracy(digits_run, tmp_path, capsys) -> None:
    from PIL import Image

    from relssl.cli import main

    result = tmp_path / "r.json"
    assert main(["eval", "retrieval", "--checkpoint", str(digits_run), "--no-progress", "--queries", "4",
                 "--json", str(result)]) == 0
    out = capsys.readouterr().out
    assert "top-10 retrieval accuracy" in out
    grid = digits_run / "retrieval.png"
    width, height = Image.open(grid).size
    assert width > height > 0  # 4 rows of 11 images
    summary = json.loads(result.read_text())
    assert 10.0 < summary["retrieval_accuracy"] <= 100.0  # digits: well above the 10% of chance
    assert any(p.name.endswith(".safetensors") and "-test-" in p.name for p in (digits_run / "features").iterdir())

    # The test split as its own gallery, without the query itself.
    assert main(["eval", "retrieval", "--checkpoint", str(digits_run), "--no-progress", "--gallery", "test",
                 "--k", "5", "--output", str(tmp_path / "own.png")]) == 0
    assert (tmp_path / "own.png").stat().st_size > 0


def test_cli_random_init_without_checkpoint_needs_output(capsys) -> None:
    from relssl.cli import main

    assert main(["eval", "retrieval", "--random-init", "--backbone", "conv4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and err.count("\n") == 1  # one line, no traceback
    assert main(["eval", "knn", "--no-progress"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
