"""Datasets in their official on-disk formats, downloaded with checksums and decoded once to a uint8 cache.

    from relssl.data import load_split
    train = load_split("cifar10", "train")        # ImageArrays: images (N, 32, 32, 3) uint8, labels, classes

Every reader returns the same `ImageArrays`; the first read of a split decodes its files and
stores them under the cache folder, later reads memory-map that cache (see relssl.data.cache).
"""

from relssl.data.arrays import ImageArrays
from relssl.data.errors import DataError
from relssl.data.registry import DATASET_NAMES, dataset_splits, load_split

__all__ = ["DATASET_NAMES", "DataError", "ImageArrays", "dataset_splits", "load_split"]
