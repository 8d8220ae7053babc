"""`relssl eval linear`: load a backbone from a checkpoint (or random init) and linear-evaluate it.

The probe's settings are the `eval` section of a run config (paper 1's by default); `--eval-config
FILE` reads them from a YAML file (e.g. configs/eval/linear_paper2.yaml) and `--epochs`, `--lr`,
`--batch-size`, `--standardize` override single keys.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from relssl.config import ConfigError, EvalConfig, build_config, load_yaml
from relssl.models import create_backbone
from relssl.train.checkpoint import CheckpointError, load_checkpoint
from relssl.train.evaluation import evaluate_linear, linear_eval_config


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


def eval_section(eval_config: str | Path | None, overrides: dict[str, Any] | None = None) -> EvalConfig:
    """The validated `eval` section of a YAML file (defaults without one), plus `eval.*` overrides.

    Only the file's `eval:` section is read, so a whole run config works too; a bad key or value
    fails naming it (`config key 'eval.optimizer': ...`).
    """
    tree: dict[str, Any] = {}
    if eval_config is not None:
        section = load_yaml(eval_config).get("eval")
        if not isinstance(section, dict):
            raise ConfigError(f"config file {eval_config}: needs an 'eval:' section (see configs/eval/)")
        tree = {"eval": section}
    return build_config(tree, {f"eval.{k}": v for k, v in (overrides or {}).items()}).eval


def run_linear_eval(args: argparse.Namespace) -> int:
    """Run the linear protocol for the parsed `eval linear` arguments; prints and optionally writes JSON."""
    from relssl.eval_tools_cli import load_eval_setup

    options = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
               "standardize": True if args.standardize else None}
    ev = eval_section(getattr(args, "eval_config", None), {k: v for k, v in options.items() if v is not None})
    setup = load_eval_setup(args, "eval linear")
    lin_cfg = linear_eval_config(ev, seed=args.seed)
    result = evaluate_linear(
        setup.backbone, setup.data, mean=setup.mean, std=setup.std, config=lin_cfg, device=setup.device,
        cache=setup.cache, cache_key=setup.cache_key, size=setup.size, progress=setup.progress,
    )
    line = (f"linear evaluation ({setup.which} {setup.backbone.__class__.__name__} on {setup.dataset}): "
            f"top-1 {result.top1:.2f}%")
    if result.top5 is not None:
        line += f", top-5 {result.top5:.2f}%"
    print(line)
    if args.output:
        out = {"dataset": setup.dataset, "backbone": setup.which, **result.to_dict(),
               "optimizer": lin_cfg.optimizer, "schedule": lin_cfg.schedule, "effective_lr": lin_cfg.effective_lr}
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return 0
