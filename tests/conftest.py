"""Fixtures that several test files share: Gaussian blobs, solid PNGs, a one-thread limit and a trained digits run.

Helpers come as fixtures that return the function (tests/ is not a package, so test files do not import from here).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

Blobs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _blobs(n: int, dim: int, classes: int, separation: float, seed: int, spread: float = 1.0) -> Blobs:
    """Train and test Gaussian blobs: shared centres N(0, 1) * separation, each sample plus N(0, 1) * spread."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * separation
    y = torch.randint(0, classes, (n,), generator=g)
    y_test = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    x_test = centres[y_test] + spread * torch.randn(n, dim, generator=g)
    return x, y, x_test, y_test


@pytest.fixture
def blobs() -> Callable[..., Blobs]:
    """`blobs(n, dim, classes, separation, seed, spread=1.0) -> (x, y, x_test, y_test)` from `_blobs`."""
    return _blobs


def _png(path: Path, value: int | tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> None:
    """A solid RGB image of (height, width) `size` at `path` (parents created); PNG so pixels are exact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, "PNG")


@pytest.fixture
def png() -> Callable[..., None]:
    """`png(path, value, size=(8, 8))`: writes a solid PNG of one grey value or RGB colour, creating its folders."""
    return _png


def _leftover(folder: Path, name: str, age: float) -> Path:
    """A file `name` in `folder` last modified `age` seconds ago, as a killed writer would leave it."""
    path = folder / name
    path.write_bytes(b"half-written")
    when = time.time() - age
    os.utime(path, (when, when))
    return path


@pytest.fixture
def leftover() -> Callable[[Path, str, float], Path]:
    """`leftover(folder, name, age)`: a half-written temporary file, `age` seconds old."""
    return _leftover


# On tiny inputs (k-means, t-SNE, clustering, small networks) thread start-up and contention with other jobs for a
# few cores cost far more than the arithmetic: about 0.3 s per scikit-learn k-means fit on a busy 2-core machine
# against 3 ms with one thread, t-SNE 20x slower, a 3 s RCL run taking 100 s. Not autouse: a test file asks for it
# with `pytestmark = pytest.mark.usefixtures("one_thread")`.
@pytest.fixture
def one_thread() -> Iterator[None]:
    """One thread for OpenMP, BLAS (threadpoolctl) and torch's intra-op pool while the test runs."""
    with threadpool_limits(limits=1):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_run_trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a one-epoch Relational Reasoning run on the built-in digits set, trained once per session."""
    from relssl.cli import main

    runs = tmp_path_factory.mktemp("digits_runs")
    assert main(["train", "--epochs", "1", "--k", "2", "--runs-dir", str(runs), "--run-name", "r",
                 "--no-progress", "--set", "eval.epochs=2", "--set", "eval.compare_random=false"]) == 0
    return runs / "r"


@pytest.fixture
def digits_run(digits_run_trained: Path, tmp_path: Path) -> Path:
    """This test's own copy (`tmp_path / "r"`) of the session's digits run, as training left it."""
    return Path(shutil.copytree(digits_run_trained, tmp_path / "r"))


def _backbone_run(folder: Path, backbone: dict, *, overrides: dict | None = None, seed: int = 0,
                  normalization: tuple[list[float], list[float]] = ([0.4, 0.5, 0.6], [0.2, 0.25, 0.3])) -> Path:
    """A run directory as training leaves it (last.pt, backbone.safetensors, config.yaml), without training.

    The backbone (config section `backbone`) gets seeded random weights and random BatchNorm statistics,
    so that eval mode and every buffer matter; `overrides` are dotted config keys (e.g. augment.size).
    """
    import yaml

    from relssl.train.checkpoint import CHECKPOINT_FORMAT, save_backbone_safetensors, save_checkpoint
    from relssl.train.config import build_config

    config = build_config({"backbone": backbone}, overrides)
    torch.manual_seed(seed)
    module = config.backbone.build()
    for name, buffer in module.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0.0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    folder.mkdir(parents=True, exist_ok=True)
    mean, std = normalization
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": config.to_dict(),
                     "method": {f"backbone.{k}": v for k, v in module.state_dict().items()},
                     "train_state": {"global_step": 1}, "normalization": {"mean": mean, "std": std}},
                    folder / "last.pt")
    save_backbone_safetensors(module, folder / "backbone.safetensors")
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return folder


@pytest.fixture
def backbone_run() -> Callable[..., Path]:
    """`backbone_run(folder, {"name": "resnet18"}, overrides={...})`: an untrained run directory (see `_backbone_run`)."""
    return _backbone_run
