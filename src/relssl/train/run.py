"""One `relssl train` run: pretrain, export, evaluate (learned and random init), write metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relssl.augment import AugmentConfig
from relssl.data.stream import StreamLoader
from relssl.distributed import (
    all_gather_objects,
    broadcast_object,
    is_main,
    start_process_group,
    stop_process_group,
    world_size,
)
from relssl.errors import ConfigError
from relssl.evaluate import EvalContext, FeatureCache, ScoredBackbone, evaluate_backbones, open_eval_data
from relssl.methods import METHODS, Method, create_method
from relssl.train.config import RunConfig, build_config
from relssl.train.inputs import open_training_inputs
from relssl.train.setup import create_run_dir, seed_everything, write_config, write_json
from relssl.train.trainer import Trainer

__all__ = ["build_backbone", "build_method", "compare_random_enabled", "resume_config",
           "run_training"]

Log = Callable[[str], None]


def build_backbone(config: RunConfig) -> nn.Module:
    """Create the configured backbone with weights drawn from the run's seed.

    Seeding just before construction makes the random-init baseline exactly the weights
    the learned backbone started from.
    """
    torch.manual_seed(config.seed)
    return config.backbone.build()


def build_method(config: RunConfig, backbone: nn.Module, *, num_images: int, num_classes: int) -> Method:
    """The run's method around `backbone`, from its own config section."""
    return create_method(config.method, backbone, config.method_config, num_images=num_images,
                         num_classes=num_classes, seed=config.seed)


def resume_config(checkpoint: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """The config a resumed run continues with: its saved settings plus explicit overrides.

    Older checkpoints carry every method's section; the ones this run does not use are dropped.
    """
    return build_config(checkpoint["config"], overrides, check_other_methods=False)


def compare_random_enabled(config: RunConfig) -> bool:
    """`eval.compare_random`, defaulting to on for the built-in digits set only."""
    flag = config.eval.compare_random
    return config.data.dataset == "digits" if flag is None else flag


def _quiet(line: str) -> None:
    """The log of ranks other than 0: they print nothing."""


def run_training(config: RunConfig, checkpoint: dict[str, Any] | None = None, run_dir: Path | None = None,
                 log: Log = print) -> tuple[Path, dict[str, Any]]:
    """Train (or, given a loaded checkpoint and its run directory, resume) a run; evaluate it.

    Returns (run_dir, metrics). When resuming, `config` should be the checkpoint's own config
    with the user's explicit overrides applied (see `resume_config`). Under torchrun every process
    calls this: they join the process group here (and leave it after training), rank 0 alone
    writes files and evaluates, and the others return metrics without evaluation.
    """
    device, joined = start_process_group(config.train.backend, config.train.device)
    main = is_main()  # remembered: after the group is left every process would look like rank 0
    try:
        run_dir, metrics, trainer, aug_cfg = _train(config, checkpoint, run_dir, device, log if main else _quiet)
    except BaseException:
        if joined:  # no last barrier: the other ranks may be gone or stuck; the launcher ends them
            stop_process_group(wait=False)
        raise
    if joined:
        stop_process_group()
    if not metrics["finished"] or not main:
        return run_dir, metrics
    if config.eval.linear:
        metrics.update(_evaluate(config, trainer, aug_cfg, device, run_dir, log))
    write_json(metrics, run_dir / "metrics.json")
    log(f"metrics: {run_dir / 'metrics.json'}")
    return run_dir, metrics


def _train(config: RunConfig, checkpoint: dict[str, Any] | None, run_dir: Path | None, device: torch.device,
           log: Log) -> tuple[Path, dict[str, Any], Trainer, AugmentConfig]:
    """Pretrain on every rank; the metrics of the training stage (and, on rank 0, backbone.safetensors)."""
    seed_everything(config.seed)

    data = config.data
    inputs = open_training_inputs(config, config.train.progress)
    aug_cfg = inputs.augment_config(config)
    log(f"pretraining {config.method} / {config.backbone.name} on {data.dataset}:{inputs.split} "
        f"({inputs.describe()}) on {device}")
    processes = world_size()
    if processes > 1:
        log(f"{processes} processes: batch {config.train.batch_size} images per step in all "
            f"({config.train.batch_size // processes} per process); lr {config.optim.lr:g} as given, for that global batch")

    method = build_method(config, build_backbone(config), num_images=len(inputs), num_classes=inputs.num_classes)
    labels = method.training_labels(inputs.labels, config.seed)
    if METHODS.get(config.method).needs_labels and (labels < 0).any():
        raise ConfigError(f"method {config.method!r} needs labels, but the {data.dataset}:{inputs.split} split has "
                          "unlabelled images; pretrain on a labelled split (data.train_split)")
    if inputs.arrays is not None:
        trainer = Trainer(config, method, inputs.arrays.images, labels, aug_cfg, device)
    else:
        trainer = Trainer(config, method, None, None, aug_cfg, device,
                          stream=inputs.loader(config, labels, method.num_views, device))
    # The run directory appears only once everything above has validated, so a bad start
    # leaves nothing behind. Rank 0 makes it and tells the others its name.
    if checkpoint is None or run_dir is None:
        checkpoint = None
        run_dir = broadcast_object(create_run_dir(config) if is_main() else None)
    elif is_main():
        write_config(config, run_dir)  # record overrides such as a longer schedule
    assert run_dir is not None
    trainer.run_dir = run_dir
    log(f"run directory: {run_dir}")
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        log(f"resumed at epoch {trainer.state.epoch}, step {trainer.state.global_step}/{trainer.total_steps}")
    t0 = time.perf_counter()
    state = trainer.fit()
    metrics: dict[str, Any] = {
        "method": config.method, "dataset": data.dataset, "backbone": config.backbone.name,
        "seed": config.seed, "train_steps": state.global_step, "train_epochs_completed": state.epoch,
        "train_seconds": round(state.elapsed, 2), "finished": trainer.finished,
    }
    if isinstance(trainer.stream, StreamLoader):  # unreadable images replaced this session, all ranks
        metrics["data_skipped_images"] = sum(all_gather_objects(trainer.stream.skipped))
    if not trainer.finished:
        if is_main():
            write_json(metrics, run_dir / "metrics.json")
        return run_dir, metrics, trainer, aug_cfg
    trainer.export_backbone()
    log(f"trained {state.global_step} steps in {time.perf_counter() - t0:.1f}s this session")
    return run_dir, metrics, trainer, aug_cfg


def _evaluate(config: RunConfig, trainer: Trainer, aug_cfg: AugmentConfig, device: torch.device,
              run_dir: Path, log: Log) -> dict[str, Any]:
    """The configured evaluation protocol on the learned backbone (and its random init if enabled).

    eval.dataset (transfer, grain) evaluates on another dataset than pretraining; the run's own
    evaluation splits (data.eval_*_split) apply only to its own dataset.
    """
    ev, data = config.eval, config.data
    dataset = ev.dataset or data.dataset
    same = dataset == data.dataset
    root = ev.root if ev.dataset else data.root
    # Transfer to another dataset: its own choice of streaming, the run's reader settings.
    eval_cfg = data if same else data.model_copy(update={"dataset": dataset, "root": root, "stream": None,
                                                         "class_list": None})
    crop = trainer.stream.crops.size if isinstance(trainer.stream, StreamLoader) else aug_cfg.size
    eval_data = open_eval_data(dataset, root, eval_cfg, train_split=data.eval_train_split if same else None,
                               test_split=data.eval_test_split if same else None, crop=crop,
                               progress=config.train.progress)
    backbones = [ScoredBackbone(trainer.method.backbone, "", f"learned-step{trainer.state.global_step}")]
    if compare_random_enabled(config):
        backbones.append(ScoredBackbone(build_backbone(config), "random_init_", "random-init"))
    mean, std = aug_cfg.normalization()
    context = EvalContext(config=ev, finetune=config.finetune, data=eval_data, dataset=dataset, mean=mean, std=std,
                          size=aug_cfg.size, device=device, cache=FeatureCache(run_dir / "features"),
                          seed=config.seed, progress=config.train.progress, log=log)
    return evaluate_backbones(backbones, context)
