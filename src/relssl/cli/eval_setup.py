"""The first half every `relssl eval` protocol shares: a backbone, the labelled splits, a feature cache."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relssl.config import validate_section
from relssl.data import DataConfig, channel_stats
from relssl.data.stream import stream_sample
from relssl.distributed import resolve_device
from relssl.errors import ConfigError, DataError
from relssl.evaluate import EvalData, FeatureCache, StreamedEvalData, eval_splits, open_eval_data
from relssl.evaluate.keys import feature_identity, feature_key
from relssl.models import BackboneConfig
from relssl.train.artifacts import load_trained_backbone

__all__ = ["EvalSetup", "add_common_options", "load_eval_setup"]


@dataclass
class EvalSetup:
    """A backbone ready to embed the labelled splits of a dataset, with where to cache and write results."""

    backbone: torch.nn.Module
    data: EvalData | StreamedEvalData
    dataset: str
    root: str | None
    train_split: str
    test_split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None
    device: torch.device
    cache: FeatureCache | None
    cache_key: str  # the readable prefix of the feature-cache keys (relssl.evaluate.keys adds the content digest)
    which: str  # "learned" or "random-init"
    run_dir: Path | None
    progress: bool

    @property
    def description(self) -> str:
        """E.g. ``learned Conv4 on cifar10``, or ``... on imagefolder:cifar10`` naming the folder."""
        data = f"{self.dataset}:{Path(self.root).name}" if self.dataset == "imagefolder" and self.root else self.dataset
        return f"{self.which} {self.backbone.__class__.__name__} on {data}"

    def labels(self, name: str) -> torch.Tensor:
        """Int64 labels of the ``"train"`` or ``"test"`` split."""
        return torch.from_numpy(np.array(self.data.labels(name)))  # a copy: the cache is a read-only memmap

    def features(self, name: str) -> torch.Tensor:
        """Float32 CPU features of the ``"train"`` or ``"test"`` split, from the cache when there."""

        def compute() -> torch.Tensor:
            return self.data.features(self.backbone, name, mean=self.mean, std=self.std, size=self.size,
                                      device=self.device, progress=self.progress)

        if self.cache is None:
            features = compute()
        else:  # keyed by the weights, the images and the transform, as evaluate_linear keys them
            identity = feature_identity(self.backbone, self.data, name, mean=self.mean, std=self.std, size=self.size)
            features = self.cache.get_or_compute(feature_key(self.cache_key, name, identity), compute, identity)
        unreadable = int((~torch.isfinite(features).all(dim=1)).sum())
        if unreadable:  # NaN rows: streamed files that could not be read (a warning named each)
            raise DataError(f"{unreadable} image(s) of the {name} split could not be read (named in the warnings "
                            "above); this protocol needs every image: remove or replace them")
        return features

    def default_output(self, stem: str, option: str = "--output") -> Path:
        """``<run dir>/<stem>.png`` (``<stem>-random-init.png`` for a random init); an error without a run dir."""
        if self.run_dir is None:
            raise ConfigError(f"without --checkpoint there is no run directory to write into: give {option} FILE.png")
        suffix = "-random-init" if self.which == "random-init" else ""
        return self.run_dir / f"{stem}{suffix}.png"


def add_common_options(p: argparse.ArgumentParser) -> None:
    """The backbone, data and device options every evaluation protocol takes."""
    p.add_argument("--checkpoint", metavar="PATH", help="run directory, last.pt, or backbone.safetensors in a run directory")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-root", metavar="DIR")
    p.add_argument("--random-init", action="store_true", help="evaluate the backbone at random initialisation")
    p.add_argument("--backbone", help="backbone for --random-init without a checkpoint")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init, query sample and t-SNE")
    p.add_argument("--train-split", help="labelled reference split (default: the dataset's, e.g. train160 for slimagenet64)")
    p.add_argument("--test-split", help="split to score on (default: the dataset's, e.g. test40 for slimagenet64)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-download", action="store_true")
    p.add_argument("--verify-cache", action="store_true",
                   help="hash the whole decode cache and its source files before use")
    p.add_argument("--no-progress", action="store_true")


def load_eval_setup(args: argparse.Namespace, command: str = "eval") -> EvalSetup:
    """Backbone, labelled splits, normalisation, device and feature cache for parsed `eval` arguments.

    Reads the options of `add_common_options` from ``args``. The normalisation is the
    checkpoint's; without one, channel statistics of the train split.
    """
    if not args.checkpoint and not args.random_init:
        raise ConfigError(f"{command} needs --checkpoint PATH, or --random-init with --backbone NAME")
    config: dict[str, Any] = {}
    run_dir: Path | None = None
    if args.checkpoint:
        backbone, config, tag = load_trained_backbone(args.checkpoint)
        ckpt = Path(args.checkpoint)
        run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    if args.random_init:
        section = {"name": args.backbone} if args.backbone else config.get("backbone")
        if not section:
            raise ConfigError("--random-init needs --backbone NAME (or a --checkpoint to copy the architecture from)")
        backbone_config = validate_section(BackboneConfig, section, prefix="backbone")
        torch.manual_seed(args.seed)
        backbone = backbone_config.build()
        tag = f"random-init-seed{args.seed}"
    data_cfg = dict(config.get("data", {}))
    if args.random_init and "image_size" not in data_cfg:  # a timm backbone's own image side (else the dataset's)
        own_size = backbone_config.input_size()
        data_cfg["image_size"] = own_size.side if own_size else None
    dataset = args.dataset or data_cfg.get("dataset") or "digits"
    root = args.data_root or (data_cfg.get("root") if dataset == data_cfg.get("dataset") else None)
    if dataset != data_cfg.get("dataset"):  # another dataset than the run's: its own streaming choice
        data_cfg = {k: v for k, v in data_cfg.items() if k in ("image_size", "workers", "strict", "eval_resize")}
    data_cfg.update(dataset=dataset, root=root, download=not args.no_download,
                    verify_cache=args.verify_cache)
    progress = not args.no_progress
    train_split, test_split = eval_splits(dataset, args.train_split, args.test_split)
    aug = config.get("augment", {})
    data = open_eval_data(dataset, root, validate_section(DataConfig, data_cfg, prefix="data"),
                          train_split=train_split, test_split=test_split, crop=aug.get("size"), progress=progress)
    mean, std = aug.get("mean"), aug.get("std")
    if mean is None or std is None:
        if isinstance(data, StreamedEvalData):  # a seeded sample of evaluation crops
            mean, std = channel_stats(stream_sample(data.train, data.crop, data.resize, seed=args.seed))
        else:
            mean, std = channel_stats(data.train.images, seed=args.seed)
    return EvalSetup(
        backbone=backbone, data=data, dataset=dataset, root=root, train_split=train_split, test_split=test_split,
        mean=tuple(mean), std=tuple(std), size=aug.get("size"), device=resolve_device(args.device),
        cache=FeatureCache(run_dir / "features") if run_dir else None,
        cache_key=f"{tag}-{dataset}-{train_split}-{test_split}",
        which="random-init" if args.random_init else "learned", run_dir=run_dir, progress=progress,
    )
