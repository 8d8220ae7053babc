"""scikit-learn's 8x8 handwritten digits as a tiny real image data set (the built-in default).

The 1,797 grayscale images (values 0..16) that `sklearn.datasets.load_digits()` returns, read
straight from the copy bundled with scikit-learn (`sklearn/datasets/data/digits.csv.gz`) so that
loading takes milliseconds instead of the ~0.8 s that importing scikit-learn costs; if that file
is not where expected, `load_digits()` itself is used. Pixels are scaled to uint8 0..255
(x * 255 / 16, rounded), upsampled with PIL bilinear interpolation to `image_size` (default 16;
8 keeps the originals) and repeated to 3 channels.

Split: stratified and fixed: with `numpy.random.default_rng(0)`, 25% of each class (rounded)
goes to "test" (450 images) and the rest to "train" (1,347); both keep the original order.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from relssl.data.arrays import ImageArrays
from relssl.data.registry import register_dataset

SPLITS = ("train", "test")
DEFAULT_SIZE = 16
TEST_FRACTION = 0.25
SEED = 0


def _bundled_csv() -> Path | None:
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    return path if path.is_file() else None


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits as float (1797, 8, 8) images 0..16 and int64 targets, exactly as load_digits() gives them."""
    path = _bundled_csv()
    if path is not None:
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # pragma: no cover - unusual installs only

    data = load_digits()  # pragma: no cover
    return data.images, data.target.astype(np.int64)  # pragma: no cover


def split_indices(targets: np.ndarray, split: str) -> np.ndarray:
    """Sorted indices of `split`: a fixed stratified 75/25 split (see the module docstring)."""
    rng = np.random.default_rng(SEED)
    test = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        test.append(rng.permutation(members)[: int(np.rint(TEST_FRACTION * len(members)))])
    is_test = np.zeros(len(targets), dtype=bool)
    is_test[np.concatenate(test)] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


@register_dataset("digits", splits=SPLITS, in_memory=True)
def load(split: str, image_size: int | None = None) -> ImageArrays:
    """scikit-learn's 1,797 8x8 digits, built in: `split` ("train" or "test") at image_size x image_size (default 16)."""
    images, targets = raw_digits()
    idx = split_indices(targets, split)
    gray = np.rint(images[idx] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    size = image_size or DEFAULT_SIZE
    if size != gray.shape[1]:
        gray = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.Resampling.BILINEAR)) for g in gray])
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    labels = targets[idx]
    rgb.flags.writeable = False
    labels.flags.writeable = False
    return ImageArrays(rgb, labels, tuple(str(d) for d in range(10)))
