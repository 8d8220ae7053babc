"""Dataset names and splits, argument checking, and the built-in digits data set."""

from __future__ import annotations

import numpy as np
import pytest

from relssl.data import DATASETS, DataError, ImageArrays, dataset_spec, dataset_splits, load_split


def test_names_and_splits() -> None:
    assert set(DATASETS.names()) == {"digits", "cifar10", "cifar100", "cifar100-20", "stl10", "tiny-imagenet",
                                     "slimagenet64", "imagefolder", "imagenet"}
    assert DATASETS.names()[0] == "digits"  # the default registers first
    assert dataset_spec("stl10").pretrain_split == "unlabeled"
    assert dataset_spec("slimagenet64").eval_splits == ("train160", "test40")
    assert dataset_spec("imagefolder").needs_root and not dataset_spec("cifar10").needs_root
    assert dataset_splits("digits") == ("train", "test")
    assert dataset_splits("cifar100-20") == ("train", "test")
    assert dataset_splits("stl10") == ("train", "test", "unlabeled")
    assert dataset_splits("tiny-imagenet") == ("train", "val", "test")
    assert dataset_splits("slimagenet64")[:3] == ("train", "val", "test")
    assert set(dataset_splits("imagefolder")) == {"train", "val", "test", "all"}


def test_unknown_name_and_split_list_the_valid_ones() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar11'.*cifar10, cifar100"):
        load_split("cifar11", "train")
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_splits("nope")
    with pytest.raises(DataError, match="unknown split 'validation' of stl10; choose from train, test, unlabeled"):
        load_split("stl10", "validation")


@pytest.mark.parametrize("size", [0, -3, 2.5, "32"])
def test_bad_image_size(size) -> None:
    with pytest.raises(DataError, match="image_size"):
        load_split("digits", "train", image_size=size)


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_image_arrays_checks_its_contract() -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    data = ImageArrays(images, np.array([0, -1]), ["a"])
    assert data.classes == ("a",) and data.num_classes == 1 and len(data) == 2
    with pytest.raises(ValueError):
        ImageArrays(images.astype(np.float32), np.array([0, 0]), ("a",))
    with pytest.raises(ValueError):
        ImageArrays(images, np.array([0, 1]), ("a",))  # label 1 has no class name


def test_digits() -> None:
    from sklearn.datasets import load_digits

    train, test = load_split("digits", "train"), load_split("digits", "test")
    assert train.images.shape == (1347, 16, 16, 3) and test.images.shape == (450, 16, 16, 3)
    assert train.classes == tuple("0123456789") and train.images.dtype == np.uint8
    assert np.all(train.images[..., 0] == train.images[..., 2])
    assert train.images.max() == 255 and train.images.min() == 0
    counts = np.bincount(test.labels, minlength=10) / np.bincount(
        np.concatenate([train.labels, test.labels]), minlength=10)
    assert np.all(np.abs(counts - 0.25) < 0.01)  # stratified
    again = load_split("digits", "test")
    np.testing.assert_array_equal(again.images, test.images)  # deterministic

    native_train = load_split("digits", "train", image_size=8)
    native_test = load_split("digits", "test", image_size=8)
    reference = load_digits()
    scaled = np.rint(reference.images * 255 / 16).astype(np.uint8)
    merged = np.concatenate([native_train.images[..., 0], native_test.images[..., 0]])
    merged_labels = np.concatenate([native_train.labels, native_test.labels])
    order = np.lexsort(merged.reshape(len(merged), -1).T)
    ref_order = np.lexsort(scaled.reshape(len(scaled), -1).T)
    np.testing.assert_array_equal(merged[order], scaled[ref_order])  # the same 1,797 images, split in two
    np.testing.assert_array_equal(np.sort(merged_labels), np.sort(reference.target))


def test_digits_ignores_root() -> None:
    assert len(load_split("digits", "train", root="/does/not/matter", download=False)) == 1347
