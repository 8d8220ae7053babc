"""Tests for relssl.evaluate feature extraction and the feature cache."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from relssl.evaluate import FeatureCache, extract_features

MEAN = torch.tensor([0.49, 0.48, 0.45])
STD = torch.tensor([0.25, 0.24, 0.26])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalized float (B, 3, H, W), standing in for augment's to_normalized."""
    x = images.permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN.to(x.device)[:, None, None]) / STD.to(x.device)[:, None, None]


def small_backbone() -> nn.Module:
    """Mode-sensitive backbone: BatchNorm and Dropout act differently in train and eval mode."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6),
    )
    with torch.no_grad():  # non-trivial running statistics, so train and eval mode really differ
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net


def images(n: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)


def reference(net: nn.Module, data: np.ndarray) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return net(normalize(torch.from_numpy(data)))


# --- extract_features --------------------------------------------------------------------------


def test_matches_direct_forward_pass_with_uneven_batches() -> None:
    net, data = small_backbone(), images(10)
    features = extract_features(net, data, normalize=normalize, batch_size=4)
    assert features.shape == (10, 6) and features.dtype == torch.float32 and features.device.type == "cpu"
    torch.testing.assert_close(features, reference(net, data))


def test_restores_train_mode_of_every_submodule() -> None:
    net = small_backbone().train()
    net[1].eval()  # e.g. frozen BatchNorm inside a training model: must stay as the caller left it
    extract_features(net, images(4), normalize=normalize)
    assert net.training and net[3].training and not net[1].training
    net.eval()
    extract_features(net, images(4), normalize=normalize)
    assert not any(m.training for m in net.modules())


def test_restores_mode_when_the_forward_pass_raises() -> None:
    net = small_backbone().train()

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        extract_features(net, images(4), normalize=broken)
    assert all(m.training for m in net.modules())


def test_accepts_a_numpy_memmap_and_a_tensor(tmp_path: Path) -> None:
    net, data = small_backbone(), images(9, seed=1)
    mm = np.memmap(tmp_path / "images.u8", dtype=np.uint8, mode="w+", shape=data.shape)
    mm[:] = data
    mm.flush()
    readonly = np.memmap(tmp_path / "images.u8", dtype=np.uint8, mode="r", shape=data.shape)
    expected = reference(net, data)
    torch.testing.assert_close(extract_features(net, readonly, normalize=normalize, batch_size=4), expected)
    torch.testing.assert_close(extract_features(net, torch.from_numpy(data), normalize=normalize), expected)


def test_flattens_pooled_feature_maps() -> None:
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1))  # returns (B, 5, 1, 1)
    assert extract_features(net, images(3), normalize=normalize).shape == (3, 5)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), "uint8 with shape"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "empty"),
    ],
)
def test_rejects_bad_images(data: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        extract_features(small_backbone(), data, normalize=normalize)


def test_rejects_a_backbone_on_another_device() -> None:
    net = small_backbone().to("meta")
    with pytest.raises(ValueError, match="backbone is on meta"):
        extract_features(net, images(2), normalize=normalize, device="cpu")


def test_progress_bar_runs() -> None:
    assert extract_features(small_backbone(), images(5), normalize=normalize, batch_size=2,
                            progress=True, desc="test").shape == (5, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_extract_on_cuda_matches_cpu() -> None:
    net, data = small_backbone(), images(20)
    cpu = extract_features(net, data, normalize=normalize, batch_size=8)
    cuda = extract_features(net.cuda(), data, normalize=normalize, batch_size=8, device="cuda")
    assert cuda.device.type == "cpu"
    torch.testing.assert_close(cuda, cpu, atol=1e-4, rtol=1e-4)


# --- FeatureCache ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_cache_round_trip_and_missing_key(tmp_path: Path, fmt: str) -> None:
    cache = FeatureCache(tmp_path / "cache", format=fmt)
    assert cache.get("resnet32-cifar10-train") is None
    features = torch.randn(7, 5)
    cache.put("resnet32-cifar10-train", features)
    loaded = cache.get("resnet32-cifar10-train")
    assert loaded is not None and loaded.dtype == torch.float32
    assert torch.equal(loaded, features)
    assert "resnet32-cifar10-train" in cache
    assert cache.path("resnet32-cifar10-train").suffix == "." + fmt


def test_cache_default_format_is_safetensors(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    assert FeatureCache(tmp_path).format == "safetensors"


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_cache_write_is_atomic(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path, format=fmt)
    old = torch.arange(6.0).reshape(2, 3)
    cache.put("k", old)
    cache.put("k", torch.ones(4, 3))  # overwrite
    assert torch.equal(cache.get("k"), torch.ones(4, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"k.{fmt}"]  # no temporary files left

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        cache.put("k", torch.zeros(1, 3))
    monkeypatch.undo()
    assert torch.equal(cache.get("k"), torch.ones(4, 3))  # the previous entry survives
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"k.{fmt}"]


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_cache_load_never_unpickles(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = FeatureCache(tmp_path, format=fmt)
    cache.put("k", torch.randn(3, 2))

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache unpickled something")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert cache.get("k").shape == (3, 2)


def test_cache_refuses_a_pickled_npy(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path, format="npy")
    np.save(cache.path("evil"), np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="evil.npy"):
        cache.get("evil")


@pytest.mark.parametrize("fmt", ["safetensors", "npy"])
def test_cache_corrupt_file_names_the_file(tmp_path: Path, fmt: str) -> None:
    cache = FeatureCache(tmp_path, format=fmt)
    cache.path("bad").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match=r"bad\.(safetensors|npy).*delete it"):
        cache.get("bad")


@pytest.mark.parametrize("key", ["", "../escape", "a/b", ".hidden", "x" * 201, "spa ce"])
def test_cache_rejects_unsafe_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="cache key"):
        FeatureCache(tmp_path).put(key, torch.zeros(1))


def test_cache_get_or_compute_computes_once(tmp_path: Path) -> None:
    cache, calls = FeatureCache(tmp_path), []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.full((2, 2), 3.0)

    first = cache.get_or_compute("k", compute)
    second = cache.get_or_compute("k", compute)
    assert torch.equal(first, second) and len(calls) == 1
