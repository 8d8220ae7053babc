"""Datasets in their official on-disk formats, downloaded with checksums and decoded once to a uint8 cache.

    from relssl.data import load_split
    train = load_split("cifar10", "train")        # ImageArrays: images (N, 32, 32, 3) uint8, labels, classes

Every reader returns the same `ImageArrays`; the first read of a split decodes its files and
stores them under the cache folder, later reads memory-map that cache (see relssl.data.cache).
Each dataset registers itself in its reader's file (`relssl.data.registry.register_dataset`);
the imports below are what makes the built-in ones known.
"""

# isort: off
from relssl.data import digits, cifar, stl10, tiny_imagenet, slimagenet, imagefolder  # noqa: F401  (they register)
from relssl.data import imagenet  # noqa: F401  (registers)
# isort: on
from relssl.data.arrays import ImageArrays
from relssl.data.config import DataConfig
from relssl.data.listing import Listing
from relssl.data.load import load_listing, load_split
from relssl.data.registry import DATASETS, DatasetSpec, dataset_spec, dataset_splits, register_dataset
from relssl.data.stats import channel_stats
from relssl.errors import DataError

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataError",
    "DatasetSpec",
    "ImageArrays",
    "Listing",
    "channel_stats",
    "dataset_spec",
    "dataset_splits",
    "load_listing",
    "load_split",
    "register_dataset",
]
