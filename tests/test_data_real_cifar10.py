"""The real CIFAR-10 image folder (JPEG export), when RELSSL_CIFAR10 points at it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from relssl.data import load_split

CIFAR10 = os.environ.get("RELSSL_CIFAR10")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CIFAR10, reason="set RELSSL_CIFAR10 to the CIFAR-10 image folder (train/, test/) to run"),
]


def test_real_cifar10_folder(tmp_path: Path) -> None:
    for split, count in (("train", 50_000), ("test", 10_000)):
        start = time.perf_counter()
        data = load_split("imagefolder", split, CIFAR10, cache_dir=tmp_path, progress=False)
        first = time.perf_counter() - start
        assert data.images.shape == (count, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.classes == CLASSES and data.num_classes == 10
        np.testing.assert_array_equal(np.bincount(data.labels), [count // 10] * 10)
        start = time.perf_counter()
        again = load_split("imagefolder", split, CIFAR10, cache_dir=tmp_path, progress=False)
        cached = time.perf_counter() - start
        assert isinstance(again.images, np.memmap)
        np.testing.assert_array_equal(again.images[::997], data.images[::997])
        print(f"\n{split}: first read {first:.2f}s, cached read {cached:.3f}s")
        assert cached < first


def test_real_cifar10_through_the_cifar10_name(tmp_path: Path) -> None:
    data = load_split("cifar10", "test", CIFAR10, cache_dir=tmp_path, progress=False)
    assert data.images.shape == (10_000, 32, 32, 3) and data.classes == CLASSES
