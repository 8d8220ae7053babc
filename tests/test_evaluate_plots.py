"""Tests for relssl.evaluate.plots: the PNGs exist, have the expected shape, and t-SNE is seeded."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from relssl.evaluate.plots import (
    CELL_IN,
    GAP_IN,
    HEADER_IN,
    LABEL_IN,
    save_retrieval_grid,
    save_tsne_plot,
    tsne_embedding,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # t-SNE's OpenMP loop slows down 20x and more on busy cores


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("num_q,k", [(3, 10), (5, 2)])
def test_retrieval_grid_png_has_one_cell_per_image(tmp_path, num_q: int, k: int) -> None:
    labels = np.arange(num_q) % 3
    neighbour_labels = (labels[:, None] + np.arange(k)[None, :]) % 3
    path = save_retrieval_grid(images((num_q, 16, 16, 3)), images((num_q, k, 16, 16, 3), 1), tmp_path / "sub" / "g.png",
                               query_labels=labels, neighbour_labels=neighbour_labels, class_names=["a", "b", "c"])
    assert path.stat().st_size > 0
    image = Image.open(path)
    assert image.format == "PNG"
    width, height = image.size
    expected = ((k + 1) * CELL_IN + GAP_IN + 0.2) / (num_q * (CELL_IN + LABEL_IN) + HEADER_IN)
    assert width / height == pytest.approx(expected, rel=0.01)
    assert width == pytest.approx(100 * ((k + 1) * CELL_IN + GAP_IN + 0.2), abs=1)  # 100 dpi


def test_retrieval_grid_frames_are_green_and_red(tmp_path) -> None:
    grey = np.full((1, 8, 8, 3), 128, np.uint8)
    path = save_retrieval_grid(grey, np.full((1, 2, 8, 8, 3), 128, np.uint8), tmp_path / "g.png",
                               query_labels=[0], neighbour_labels=[[0, 1]])
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    green = (pixels[..., 1] > 120) & (pixels[..., 0] < 80) & (pixels[..., 2] < 100)
    assert red.sum() > 100 and green.sum() > 100
    assert np.argwhere(green)[:, 1].mean() < np.argwhere(red)[:, 1].mean()  # the match (#1) left of the miss (#2)


def test_retrieval_grid_without_labels_and_bad_shapes(tmp_path) -> None:
    assert save_retrieval_grid(images((2, 8, 8, 3)), images((2, 3, 8, 8, 3)), tmp_path / "g.png").stat().st_size > 0
    with pytest.raises(ValueError, match="uint8"):
        save_retrieval_grid(images((2, 8, 8, 3)).astype(np.float32), images((2, 3, 8, 8, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="queries"):
        save_retrieval_grid(images((3, 8, 8, 3)), images((2, 3, 8, 8, 3)), tmp_path / "x.png")


def clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 40)
    features = np.eye(8)[labels] * 4 + rng.normal(size=(160, 8))
    return features.astype(np.float32), labels


def test_tsne_is_seeded_and_subsampled() -> None:
    features, _ = clusters()
    a, rows_a = tsne_embedding(features, max_points=100, seed=3, perplexity=10)
    b, rows_b = tsne_embedding(features, max_points=100, seed=3, perplexity=10)
    c, rows_c = tsne_embedding(features, max_points=100, seed=4, perplexity=10)
    assert a.shape == (100, 2) and np.all(np.diff(rows_a) > 0)
    np.testing.assert_array_equal(rows_a, rows_b)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(rows_a, rows_c)


def test_tsne_plot_png(tmp_path) -> None:
    features, labels = clusters()
    path = save_tsne_plot(features, labels, ["cat", "dog", "ship", "truck"], tmp_path / "t.png",
                          max_points=120, seed=0, perplexity=10)
    again = save_tsne_plot(features, labels, ["cat", "dog", "ship", "truck"], tmp_path / "t2.png",
                           max_points=120, seed=0, perplexity=10)
    image = Image.open(path)
    assert image.format == "PNG" and path.stat().st_size > 0
    width, height = image.size
    assert width / height == pytest.approx(9.6 / 7.5, rel=0.01)  # one legend column: 8 + 1.6 by 7.5 inches
    assert path.read_bytes() == again.read_bytes()
    with pytest.raises(ValueError, match="labels"):
        save_tsne_plot(features, labels[:10], None, tmp_path / "x.png")


def test_cli_tsne_on_digits(digits_run, capsys) -> None:
    from relssl.cli import main

    assert main(["eval", "tsne", "--checkpoint", str(digits_run), "--no-progress", "--max-points", "200"]) == 0
    assert (digits_run / "tsne.png").stat().st_size > 0
    assert "t-SNE plot" in capsys.readouterr().out
