"""`relssl eval linear`: load a backbone from a checkpoint (or random init) and linear-evaluate it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from relssl.config import build_config
from relssl.evaluate import FeatureCache, LinearEvalConfig
from relssl.models import create_backbone
from relssl.train.checkpoint import CheckpointError, load_checkpoint
from relssl.train.evaluation import EvalData, evaluate_linear
from relssl.train.run import default_eval_splits
from relssl.train.setup import channel_stats, resolve_device


def load_trained_backbone(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """Backbone with trained weights, the run's config dict, and a cache tag naming the weights.

    `path` is a run directory, a training checkpoint (.pt), or a backbone.safetensors whose
    run directory holds config.yaml. Nothing is unpickled.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        config_file = path.parent / "config.yaml"
        if not config_file.is_file():
            raise CheckpointError(f"{path}: no config.yaml beside it to tell which backbone it holds")
        config = yaml.safe_load(config_file.read_text())
        weights = load_file(path)
        tag = f"{path.stem}-{int(path.stat().st_mtime)}"
        normalization = None
    else:
        ckpt = load_checkpoint(path)
        config = ckpt["config"]
        weights = {k.removeprefix("backbone."): v for k, v in ckpt["method"].items() if k.startswith("backbone.")}
        tag = f"step{ckpt['train_state']['global_step']}"
        normalization = ckpt.get("normalization")
    cfg = build_config(config)
    backbone = create_backbone(cfg.backbone.name, **cfg.backbone.create_kwargs())
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {cfg.backbone.name} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    config = cfg.to_dict()
    if normalization:
        config["augment"]["mean"], config["augment"]["std"] = normalization["mean"], normalization["std"]
    return backbone, config, tag


def run_linear_eval(args: argparse.Namespace) -> int:
    """Run the linear protocol for the parsed `eval linear` arguments; prints and optionally writes JSON."""
    if not args.checkpoint and not args.random_init:
        raise ValueError("eval linear needs --checkpoint PATH, or --random-init with --backbone NAME")
    config: dict[str, Any] = {}
    cache_dir: Path | None = None
    if args.checkpoint:
        backbone, config, tag = load_trained_backbone(args.checkpoint)
        ckpt = Path(args.checkpoint)
        cache_dir = (ckpt if ckpt.is_dir() else ckpt.parent) / "features"
    if args.random_init:
        name = args.backbone or config.get("backbone", {}).get("name")
        if not name:
            raise ValueError("--random-init needs --backbone NAME (or a --checkpoint to copy the architecture from)")
        options = {} if args.backbone else build_config(config).backbone.create_kwargs()
        torch.manual_seed(args.seed)
        backbone = create_backbone(name, **options)
        tag = f"random-init-seed{args.seed}"
    data_cfg = config.get("data", {})
    dataset = args.dataset or data_cfg.get("dataset") or "digits"
    root = args.data_root or (data_cfg.get("root") if dataset == data_cfg.get("dataset") else None)
    progress = not args.no_progress
    default_train, default_test = default_eval_splits(dataset)
    train_split, test_split = args.train_split or default_train, args.test_split or default_test
    data = EvalData.load(dataset, root, train_split=train_split, test_split=test_split,
                         download=not args.no_download, image_size=data_cfg.get("image_size"), progress=progress)
    aug = config.get("augment", {})
    mean, std = aug.get("mean"), aug.get("std")
    if mean is None or std is None:
        mean, std = channel_stats(data.train.images, seed=args.seed)
    lin_cfg = LinearEvalConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               standardize=args.standardize, seed=args.seed)
    result = evaluate_linear(
        backbone, data, mean=tuple(mean), std=tuple(std), config=lin_cfg, device=resolve_device(args.device),
        cache=FeatureCache(cache_dir) if cache_dir else None,
        cache_key=f"{tag}-{dataset}-{train_split}-{test_split}", size=aug.get("size"), progress=progress,
    )
    which = "random-init" if args.random_init else "learned"
    line = f"linear evaluation ({which} {backbone.__class__.__name__} on {dataset}): top-1 {result.top1:.2f}%"
    if result.top5 is not None:
        line += f", top-5 {result.top5:.2f}%"
    print(line)
    if args.output:
        out = {"dataset": dataset, "backbone": which, **result.to_dict()}
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0
