"""One `relssl train` run: pretrain, export, evaluate (learned and random init), write metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from relssl.augment import AugmentConfig
from relssl.data.load import resolve_root
from relssl.data.stream import StreamLoader
from relssl.distributed import (
    all_gather_objects,
    broadcast_object,
    is_main,
    start_process_group,
    stop_process_group,
    world_size,
)
from relssl.errors import CheckpointError, ConfigError, RelsslError
from relssl.evaluate import EvalContext, FeatureCache, ScoredBackbone, evaluate_backbones, open_eval_data
from relssl.methods import METHODS, Method, create_method
from relssl.progress import plain_line
from relssl.train.backbone_info import run_backbone_info, run_preprocess
from relssl.train.checkpoint import remove_stale_temp_files
from relssl.train.config import RunConfig
from relssl.train.eval_target import check_eval_splits, eval_target, unlabelled_note
from relssl.train.inputs import TrainingInputs, open_training_inputs
from relssl.train.label_free import label_free_metrics
from relssl.train.lock import RunDirLock
from relssl.train.setup import create_run_dir, seed_everything, write_config, write_json
from relssl.train.tracking import check_trackers
from relssl.train.trainer import Trainer
from relssl.train.watch import plot_losses, track_metrics, watch_training

__all__ = ["build_backbone", "build_method", "compare_random_enabled", "run_training"]

Log = Callable[[str], None]
T = TypeVar("T")


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


def compare_random_enabled(config: RunConfig) -> bool:
    """`eval.compare_random`, defaulting to on for the built-in digits set only."""
    flag = config.eval.compare_random
    return config.data.dataset == "digits" if flag is None else flag


def _quiet(line: str) -> None:
    """The log of ranks other than 0: they print nothing."""


def _on_main(job: Callable[[], T]) -> T:
    """`job()` on rank 0, its result on every rank; a user error on rank 0 is raised on every rank.

    The other ranks would otherwise wait in their next collective for a rank 0 that has stopped.
    """
    result: T | None = None
    error: RelsslError | None = None
    if is_main():
        try:
            result = job()
        except RelsslError as err:
            error = err
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return cast(T, result)


def _restore(trainer: Trainer, checkpoint: dict[str, Any], run_dir: Path) -> None:
    """Load the checkpoint into the freshly built trainer; one that does not fit it is a CheckpointError."""
    try:
        trainer.load_state_dict(checkpoint)
    except CheckpointError:
        raise
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as err:  # a mismatched state
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(f"the checkpoint of {run_dir} does not fit the resumed run ({type(err).__name__}: "
                              f"{detail}); resume with the settings it was saved with, or start a new run") from None


def _lock(held: contextlib.ExitStack, run_dir: Path) -> None:
    """Take the run directory's lock (rank 0) until `held` closes; a ConfigError when another process has it."""
    held.enter_context(RunDirLock(run_dir))


def _new_run_dir(config: RunConfig, held: contextlib.ExitStack) -> Path:
    """Create, lock and record a fresh run directory (rank 0)."""
    run_dir = create_run_dir(config)
    _lock(held, run_dir)
    write_config(config, run_dir)
    return run_dir


def _reopen_run_dir(config: RunConfig, run_dir: Path) -> Path:
    """Prepare a locked, resumed run directory (rank 0): drop killed writes' temporary files, record overrides."""
    remove_stale_temp_files(run_dir)
    write_config(config, run_dir)  # record overrides such as a longer schedule
    return run_dir


def run_training(config: RunConfig, checkpoint: dict[str, Any] | None = None, run_dir: Path | None = None,
                 log: Log = plain_line) -> tuple[Path, dict[str, Any]]:
    """Train (or, given a loaded checkpoint and its run directory, resume) a run; evaluate it.

    Returns (run_dir, metrics). When resuming, `config` should be the checkpoint's own config
    with the user's explicit overrides applied (see `resume_config`). Under torchrun every process
    calls this: they join the process group here (and leave it after training), rank 0 alone
    writes files and evaluates, and the others return metrics without evaluation.
    """
    device, joined = start_process_group(config.train.backend, config.train.device)
    main = is_main()  # remembered: after the group is left every process would look like rank 0
    with contextlib.ExitStack() as held:  # the run directory's lock (rank 0), until the metrics are written
        try:
            run_dir, metrics, trainer, aug_cfg = _train(config, checkpoint, run_dir, device,
                                                        log if main else _quiet, held)
        except BaseException:
            if joined:  # no last barrier: the other ranks may be gone or stuck; the launcher ends them
                stop_process_group(wait=False)
            raise
        if joined:
            stop_process_group()
        if not metrics["finished"] or not main:
            return run_dir, metrics
        metrics.update(_feature_stats(config, trainer, aug_cfg, device, log))
        if config.eval.linear and "eval_skipped" in metrics:  # an unlabelled run (relssl.train.eval_target)
            log(unlabelled_note(metrics["eval_skipped"], str(run_dir), monitor=config.eval.monitor_every > 0))
        elif config.eval.linear:
            metrics.update(_evaluate(config, trainer, aug_cfg, device, run_dir, log))
        track_metrics(trainer, metrics)
        write_json(metrics, run_dir / "metrics.json")
        log(f"metrics: {run_dir / 'metrics.json'}")
        return run_dir, metrics


def _train(config: RunConfig, checkpoint: dict[str, Any] | None, run_dir: Path | None, device: torch.device,
           log: Log, held: contextlib.ExitStack) -> tuple[Path, dict[str, Any], Trainer, AugmentConfig]:
    """Pretrain on every rank; the metrics of the training stage (and, on rank 0, backbone.safetensors).

    Every check comes before the first write: settings, evaluation splits, and on resume the
    checkpoint loaded into the freshly built model. A resumed run directory is locked first, a
    fresh one as soon as it exists; the lock stays in `held`.
    """
    resuming = checkpoint is not None and run_dir is not None
    if resuming:
        assert run_dir is not None
        resumed_dir = run_dir
        _on_main(lambda: _lock(held, resumed_dir))
    check_trackers(config.log)  # a tracker's missing package fails before any work
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
        trainer = Trainer(config, method, inputs.arrays.images, labels, aug_cfg, device, log=log)
    else:
        trainer = Trainer(config, method, None, None, aug_cfg, device, log=log,
                          stream=inputs.loader(config, labels, method.num_views, device,
                                               labelled_batches=method.labelled_batches))
    skipped = _on_main(lambda: check_eval_splits(config, inputs))  # why an unlabelled run skips evaluation and monitor
    # The run directory appears (or, resumed, changes) only once everything above has validated,
    # so a bad start leaves nothing behind. Rank 0 writes and tells the others the name.
    if resuming:
        assert checkpoint is not None and run_dir is not None
        _restore(trainer, checkpoint, run_dir)
        known_dir = run_dir
        run_dir = _on_main(lambda: _reopen_run_dir(config, known_dir))
    else:
        run_dir = _on_main(lambda: _new_run_dir(config, held))
    trainer.run_dir = run_dir
    log(f"run directory: {run_dir}")
    if resuming:
        log(f"resumed at epoch {trainer.state.epoch}, step {trainer.state.global_step}/{trainer.total_steps}")
    _on_main(lambda: watch_training(config, trainer, aug_cfg, device, log, held, skipped))  # kNN monitor, trackers
    t0 = time.perf_counter()
    state = trainer.fit()
    plot_losses(run_dir, log)  # loss.png, also for a stopped run
    metrics: dict[str, Any] = {
        "method": config.method, "dataset": data.dataset, "backbone": config.backbone.name,
        "seed": config.seed, "train_steps": state.global_step, "train_epochs_completed": state.epoch,
        "train_seconds": round(state.elapsed, 2), "finished": trainer.finished,
    }
    if skipped and config.eval.linear:
        metrics["eval_skipped"] = skipped
    if state.diagnostics:  # Method.diagnostics per epoch (docs/methods/rcl.md): the last, and all
        metrics["diagnostics"] = {"last": state.diagnostics[-1], "per_epoch": state.diagnostics}
    if state.monitor:  # the kNN monitor's history (eval.monitor_every), also in RUN/monitor.csv
        metrics["monitor"] = state.monitor
    if isinstance(trainer.stream, StreamLoader):  # unreadable images replaced this session, all ranks
        metrics["data_skipped_images"] = sum(all_gather_objects(trainer.stream.skipped))
    if not trainer.finished:
        if is_main():
            write_json(metrics, run_dir / "metrics.json")
        return run_dir, metrics, trainer, aug_cfg
    trainer.export_backbone(_backbone_metadata(config, trainer, inputs, aug_cfg, run_dir))
    log(f"trained {state.global_step} steps in {time.perf_counter() - t0:.1f}s this session")
    return run_dir, metrics, trainer, aug_cfg


def _backbone_metadata(config: RunConfig, trainer: Trainer, inputs: TrainingInputs, aug_cfg: AugmentConfig,
                       run_dir: Path) -> dict[str, str]:
    """The description backbone.safetensors carries: what `relssl export --format safetensors` records too."""
    preprocess = run_preprocess(config, run_dir, inputs=inputs, augment=aug_cfg)
    return run_backbone_info(config, trainer.method.backbone, preprocess, run_dir).to_metadata()


def _feature_stats(config: RunConfig, trainer: Trainer, aug_cfg: AugmentConfig, device: torch.device,
                   log: Log) -> dict[str, Any]:
    """Label-free statistics of the learned backbone's features (and its random init's, when compared)."""
    backbones = {"": trainer.method.backbone}
    if compare_random_enabled(config):
        backbones["random_init_"] = build_backbone(config)
    return label_free_metrics(config, trainer.images, trainer.stream, backbones, aug_cfg, device, log)


def _evaluate(config: RunConfig, trainer: Trainer, aug_cfg: AugmentConfig, device: torch.device,
              run_dir: Path, log: Log) -> dict[str, Any]:
    """The configured evaluation protocol on the learned backbone (and its random init if enabled).

    eval.dataset (transfer, grain) evaluates on another dataset than pretraining, eval.root on another
    folder (metrics.json names it, eval_root); the run's own evaluation splits (data.eval_*_split)
    apply only to its own data.
    """
    ev = config.eval
    target = eval_target(config)
    dataset = target.dataset
    crop = trainer.stream.crops.size if isinstance(trainer.stream, StreamLoader) else aug_cfg.size
    eval_data = open_eval_data(dataset, target.root, target.data, train_split=target.train_split,
                               test_split=target.test_split, crop=crop, progress=config.train.progress)
    backbones = [ScoredBackbone(trainer.method.backbone, "", f"learned-step{trainer.state.global_step}")]
    if compare_random_enabled(config):
        backbones.append(ScoredBackbone(build_backbone(config), "random_init_", "random-init"))
    mean, std = aug_cfg.normalization()
    context = EvalContext(config=ev, finetune=config.finetune, data=eval_data, dataset=dataset, mean=mean, std=std,
                          size=aug_cfg.size, device=device, cache=FeatureCache(run_dir / "features"),
                          seed=config.seed, progress=config.train.progress, log=log)
    where = {"eval_root": str(resolve_root(dataset, target.root))} if not target.same and target.root else {}
    return {**evaluate_backbones(backbones, context), **where, "eval_test_images": eval_data.size("test")}
