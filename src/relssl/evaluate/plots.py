"""Pictures of a representation: a retrieval grid (queries and their neighbours) and a t-SNE map.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through pyplot,
so nothing opens a window and no global backend or figure state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["save_retrieval_grid", "save_tsne_plot", "tsne_embedding"]

MATCH_COLOR = "#1a9641"  # green frame: the neighbour has the query's label
MISMATCH_COLOR = "#d7191c"  # red frame: it does not
QUERY_COLOR = "#2b2b2b"

CELL_IN = 1.0  # inches per image in the retrieval grid (100 px at the default dpi)
LABEL_IN = 0.22  # room for the class name under each image
HEADER_IN = 0.3  # room for the column headers above the first row
GAP_IN = 0.35  # gap between the query column and its neighbours


def _name(label: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, format="png", facecolor="white")
    return path


def _check_images(name: str, images: np.ndarray, ndim: int) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != ndim or images.shape[-1] != 3:
        shape = "(Q, H, W, 3)" if ndim == 4 else "(Q, k, H, W, 3)"
        raise ValueError(f"{name} must be uint8 {shape}, got {images.dtype} {images.shape}")
    return images


def _frame(ax, color: str, width: float) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(color)
        spine.set_linewidth(width)


def save_retrieval_grid(
    query_images: np.ndarray,
    neighbour_images: np.ndarray,
    path: str | Path,
    *,
    query_labels: Sequence[int] | np.ndarray | None = None,
    neighbour_labels: Sequence[Sequence[int]] | np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    dpi: int = 100,
) -> Path:
    """Write a PNG with one row per query: the query image, then its ``k`` neighbours best first.

    Images are uint8 ``(Q, H, W, 3)`` and ``(Q, k, H, W, 3)``. With labels, each image is captioned
    with its class name and each neighbour framed green when its label is the query's, red when not.
    Each image takes ``CELL_IN`` inches (``dpi`` pixels per inch), so the PNG is about
    ``(k + 1) x Q`` cells plus captions.
    """
    queries = _check_images("query_images", query_images, 4)
    neighbours = _check_images("neighbour_images", neighbour_images, 5)
    num_q, k = neighbours.shape[:2]
    if queries.shape[0] != num_q or num_q == 0 or k == 0:
        raise ValueError(f"need Q >= 1 queries with k >= 1 neighbours each, got {queries.shape[0]} queries "
                         f"and neighbour_images of shape {neighbours.shape}")
    labelled = query_labels is not None and neighbour_labels is not None
    q_labels = np.asarray(query_labels if labelled else np.zeros(num_q), dtype=np.int64)
    n_labels = np.asarray(neighbour_labels if labelled else np.zeros((num_q, k)), dtype=np.int64)
    if q_labels.shape != (num_q,) or n_labels.shape != (num_q, k):
        raise ValueError(f"query_labels must have shape ({num_q},) and neighbour_labels ({num_q}, {k}), "
                         f"got {q_labels.shape} and {n_labels.shape}")

    row_in = CELL_IN + (LABEL_IN if labelled else 0.08)
    width, height = (k + 1) * CELL_IN + GAP_IN + 0.2, num_q * row_in + HEADER_IN
    fig = Figure(figsize=(width, height))
    pad = 0.06  # inches of white around each image, so frames do not touch
    for row in range(num_q):
        top = height - HEADER_IN - row * row_in
        for col in range(k + 1):
            left = 0.1 + col * CELL_IN + (GAP_IN if col else 0.0)
            rect = (left + pad) / width, (top - CELL_IN + pad) / height, (CELL_IN - 2 * pad) / width, (CELL_IN - 2 * pad) / height
            ax = fig.add_axes(rect)
            image = queries[row] if col == 0 else neighbours[row, col - 1]
            ax.imshow(image, interpolation="nearest")
            if not labelled:
                _frame(ax, QUERY_COLOR if col == 0 else "#bbbbbb", 1.0)
            else:
                label = int(q_labels[row] if col == 0 else n_labels[row, col - 1])
                match = label == int(q_labels[row])
                color = QUERY_COLOR if col == 0 else (MATCH_COLOR if match else MISMATCH_COLOR)
                _frame(ax, color, 2.5 if col == 0 else 4.0)
                ax.set_xlabel(_name(label, class_names), fontsize=8, labelpad=2,
                              color="black" if col == 0 or match else MISMATCH_COLOR)
            if row == 0:
                ax.set_title("query" if col == 0 else f"#{col}", fontsize=9, pad=4,
                             fontweight="bold" if col == 0 else "normal")
    return _save(fig, path, dpi)


def tsne_embedding(
    features: torch.Tensor | np.ndarray, *, max_points: int = 5000, seed: int = 0, perplexity: float = 30.0
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of L2-normalised features: ``(embedding (n, 2), rows used (n,))``.

    Keeps a seeded random subset of at most ``max_points`` rows (sorted), then runs scikit-learn's
    ``TSNE(init="pca", learning_rate="auto", random_state=seed)``; the same inputs and seed give the
    same embedding. Normalising first makes Euclidean distances monotone in cosine similarity, the
    metric of retrieval and kNN. Perplexity is capped below the number of points.
    """
    from sklearn.manifold import TSNE

    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must have shape (N, feature_dim) with N >= 2, got {x.shape}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"max_points must be an integer >= 2, got {max_points!r}")
    n = x.shape[0]
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    x = x[rows].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    tsne = TSNE(n_components=2, perplexity=min(float(perplexity), len(rows) - 1.0), init="pca",
                learning_rate="auto", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32), rows


def _class_colors(num_classes: int) -> list:
    from matplotlib import colormaps

    if num_classes <= 10:
        return [colormaps["tab10"](i) for i in range(num_classes)]
    if num_classes <= 20:
        return [colormaps["tab20"](i) for i in range(num_classes)]
    cmap = colormaps["turbo"]
    return [cmap(i / (num_classes - 1)) for i in range(num_classes)]


def save_tsne_plot(
    features: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None,
    path: str | Path,
    *,
    max_points: int = 5000,
    seed: int = 0,
    perplexity: float = 30.0,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Write a PNG scatter of the t-SNE map of ``features`` (see :func:`tsne_embedding`), one colour per class.

    The legend names each class (``class_names[label]``, or the label number); with many classes it
    spreads over several columns to the right of the plot.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
    n = len(features)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    embedding, rows = tsne_embedding(features, max_points=max_points, seed=seed, perplexity=perplexity)
    labels = labels[rows]
    classes = np.unique(labels)
    num_colors = max(int(classes.max()) + 1, len(class_names) if class_names is not None else 0)
    colors = _class_colors(num_colors)

    ncol = max(1, math.ceil(len(classes) / 25))
    fig = Figure(figsize=(8 + 1.6 * ncol, 7.5), layout="constrained")
    ax = fig.add_subplot()
    size = 6 if len(rows) > 2000 else 12
    for c in classes:
        mask = labels == c
        ax.scatter(embedding[mask, 0], embedding[mask, 1], s=size, color=colors[c], alpha=0.75,
                   linewidths=0, label=_name(int(c), class_names))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(rows)} feature vectors (perplexity {min(perplexity, len(rows) - 1):g}, seed {seed})",
                 fontsize=11)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=ncol, fontsize=9 if len(classes) <= 25 else 7,
              markerscale=2.5 if size == 6 else 1.5, frameon=False, handletextpad=0.3, title="class")
    return _save(fig, path, dpi)
