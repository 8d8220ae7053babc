"""Adding a part is one decorated definition: a method, a backbone and a dataset registered from this file
alone train through `relssl train`, and show up wherever the registries are read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from relssl.cli import build_parser, main
from relssl.config import Section
from relssl.data import DATASETS, ImageArrays, register_dataset
from relssl.errors import ConfigError
from relssl.methods import METHODS, Method, StepOutput, register_method
from relssl.models import BACKBONES, register_backbone
from relssl.train.config import build_config


class MeanAlignConfig(Section):
    """Settings of the test method: the weight of its variance term."""

    variance_weight: float = Field(default=1.0, ge=0)


class MeanAlign(Method):
    """Pull the two views' features together, keep their per-dimension variance near one."""

    metric_names = ("align",)

    def __init__(self, backbone: nn.Module, config: MeanAlignConfig | None = None) -> None:
        super().__init__(backbone, num_views=2)
        self.config = config or MeanAlignConfig()

    def training_step(self, views: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        z1, z2 = self.backbone(views).chunk(2)
        align = F.mse_loss(z1, z2)
        variance = F.relu(1.0 - z1.std(dim=0)).mean()
        return StepOutput(loss=align + self.config.variance_weight * variance, metrics={"align": align.detach()})


class TinyNet(nn.Module):
    """One strided convolution and a global average: the smallest backbone that can learn."""

    def __init__(self, width: int = 8, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, stride=2, padding=1)
        self.feature_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)).mean(dim=(2, 3))


def squares(split: str, image_size: int | None) -> ImageArrays:
    """Two classes of 12x12 images: a bright square top-left (0) or bottom-right (1), on noise."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    n, size = (64, 12) if split == "train" else (32, 12)
    images = rng.integers(0, 60, size=(n, size, size, 3)).astype(np.uint8)
    labels = np.arange(n) % 2
    for i, label in enumerate(labels):
        rows = slice(0, 6) if label == 0 else slice(6, 12)
        images[i, rows, rows] = 250
    return ImageArrays(images, labels.astype(np.int64), ("top-left", "bottom-right"))


@pytest.fixture
def parts() -> Iterator[None]:
    """Register the three test parts for one test, and remove them afterwards."""
    register_method("mean-align", config=MeanAlignConfig)(MeanAlign)
    register_backbone("tiny")(TinyNet)
    register_dataset("squares", splits=("train", "test"), in_memory=True)(squares)
    try:
        yield
    finally:
        METHODS.remove("mean-align")
        BACKBONES.remove("tiny")
        DATASETS.remove("squares")


def test_parts_registered_here_train_through_the_cli(parts: None, tmp_path: Path) -> None:
    code = main(["train", "--method", "mean-align", "--backbone", "tiny", "--dataset", "squares",
                 "--max-steps", "6", "--batch-size", "16", "--runs-dir", str(tmp_path), "--run-name", "run",
                 "--no-progress", "--set", "mean-align.variance_weight=0.5", "--set", "backbone.options={width: 6}",
                 "--set", "eval.epochs=2"])
    assert code == 0
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "mean-align" and metrics["train_steps"] == 6 and metrics["finished"] is True
    assert 0.0 <= metrics["linear_top1"] <= 100.0
    log = (run / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,epoch,elapsed_s,loss,align" and len(log) == 7
    saved = (run / "config.yaml").read_text()
    assert "mean-align:\n  variance_weight: 0.5" in saved and "width: 6" in saved


def test_registered_parts_are_listed_and_configured(parts: None, capsys: pytest.CaptureFixture[str]) -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]
    for name in ("mean-align", "tiny", "squares"):
        assert name in help_text
    cfg = build_config({}, {"method": "mean-align", "backbone.name": "tiny", "data.dataset": "squares"})
    assert cfg.method_config == MeanAlignConfig()
    assert "relational" not in cfg.to_dict()  # a run's config holds only its own method's section
    assert main(["train", "--method", "mean-align", "--print-config"]) == 0
    assert "mean-align:\n  variance_weight: 1.0\n" in capsys.readouterr().out


def test_bad_settings_of_registered_parts_name_their_key(parts: None) -> None:
    with pytest.raises(ConfigError, match=r"config key 'mean-align.variance_weight'"):
        build_config({}, {"method": "mean-align", "mean-align.variance_weight": -1})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'depth' for backbone 'tiny'; valid options: width, in_channels"):
        build_config({}, {"backbone.name": "tiny", "backbone.options": {"depth": 3}})
    with pytest.raises(ConfigError, match="backbone 'tiny' option 'width'"):
        build_config({}, {"backbone.name": "tiny", "backbone.options": {"width": "wide"}})


def test_a_name_cannot_be_registered_twice(parts: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny")(TinyNet)
    with pytest.raises(TypeError, match="subclass of relssl.methods.Method"):
        register_method("not-a-method")(TinyNet)  # type: ignore[type-var]


def test_parts_are_gone_after_removal() -> None:
    assert "mean-align" not in METHODS and "tiny" not in BACKBONES and "squares" not in DATASETS
    with pytest.raises(ConfigError, match="config key 'method': unknown method 'mean-align'"):
        build_config({}, {"method": "mean-align"})


def test_a_plugin_module_named_in_the_environment_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "lab_plugin.py").write_text(
        "from relssl.data import register_dataset\n"
        "from tests_lab_arrays import arrays\n"
        "register_dataset('lab-squares', splits=('train', 'test'), in_memory=True)(arrays)\n"
    )
    (tmp_path / "tests_lab_arrays.py").write_text("def arrays(split, image_size):\n    raise NotImplementedError\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("RELSSL_PLUGINS", "lab_plugin")
    try:
        assert main(["train", "--dataset", "lab-squares", "--print-config"]) == 0
        assert "dataset: lab-squares" in capsys.readouterr().out
    finally:
        DATASETS.remove("lab-squares")
    monkeypatch.setenv("RELSSL_PLUGINS", "no_such_lab_module")
    assert main(["train", "--print-config"]) == 2
    assert "RELSSL_PLUGINS / entry point names module 'no_such_lab_module'" in capsys.readouterr().err
