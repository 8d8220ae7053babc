"""One `relssl train` run: pretrain, export, evaluate (learned and random init), write metrics."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch
from torch import nn

from relssl.augment import AugmentConfig
from relssl.data import DataConfig, dataset_spec, load_listing, load_split
from relssl.data.stream import StreamLoader
from relssl.dicts import flatten
from relssl.distributed import (
    all_gather_objects,
    broadcast_object,
    is_main,
    start_process_group,
    stop_process_group,
    world_size,
)
from relssl.errors import CheckpointError, ConfigError, RelsslError
from relssl.evaluate import EvalContext, FeatureCache, ScoredBackbone, eval_splits, evaluate_backbones, open_eval_data
from relssl.methods import METHODS, Method, create_method
from relssl.train.checkpoint import remove_stale_temp_files
from relssl.train.config import RunConfig, build_config
from relssl.train.inputs import TrainingInputs, open_training_inputs
from relssl.train.lock import RunDirLock
from relssl.train.setup import create_run_dir, seed_everything, write_config, write_json
from relssl.train.trainer import Trainer

__all__ = ["build_backbone", "build_method", "check_eval_splits", "compare_random_enabled", "model_change",
           "resume_config", "run_training"]

Log = Callable[[str], None]
T = TypeVar("T")
#: Override keys that may change the trained model: refused on resume unless they keep the saved value.
MODEL_SECTIONS = ("method", "backbone")


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


def _touches_model(key: str) -> bool:
    """Whether the dotted override `key` sets part of the model: the method, backbone, a method's section, the optimizer."""
    head = key.split(".", 1)[0]
    return head in MODEL_SECTIONS or head in METHODS or key in ("optim", "optim.name")


def model_change(saved: RunConfig, resumed: RunConfig) -> tuple[str, Any, Any] | None:
    """The first (key, saved value, new value) where `resumed` trains another model than `saved`, else None.

    The model is the method, every `backbone.*` key, every key of the method's own section, and
    `optim.name` (another optimizer cannot continue from the saved optimizer state).
    """
    if saved.method != resumed.method:
        return "method", saved.method, resumed.method
    old, new = saved.to_dict(), resumed.to_dict()
    for section in ("backbone", saved.method):
        before, after = flatten(old.get(section) or {}, f"{section}."), flatten(new.get(section) or {}, f"{section}.")
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) != after.get(key):
                return key, before.get(key), after.get(key)
    if saved.optim.name != resumed.optim.name:
        return "optim.name", saved.optim.name, resumed.optim.name
    return None


def resume_config(checkpoint: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """The config a resumed run continues with: its saved settings plus explicit overrides.

    Overrides may change the schedule (train.*), evaluation (eval.*), data and device settings;
    one that changes the model (see `model_change`) is a ConfigError naming the key. Older
    checkpoints carry every method's section; the ones this run does not use are dropped.
    """
    config = build_config(checkpoint["config"], overrides, check_other_methods=False)
    kept = {key: value for key, value in overrides.items() if not _touches_model(key)}
    saved = build_config(checkpoint["config"], kept, check_other_methods=False)
    change = model_change(saved, config)
    if change is not None:
        key, before, after = change
        raise ConfigError(f"config key '{key}': the run was trained with {before!r}, not {after!r}; a resumed run keeps "
                          "its model (method, backbone, the method's section, optim.name): drop the option, or start "
                          "a new run")
    return config


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


@dataclass(frozen=True)
class EvalTarget:
    """The dataset and labelled splits `_evaluate` will read, and the config key a user sets for each split."""

    dataset: str
    root: str | None
    data: DataConfig
    train_split: str
    test_split: str
    same: bool  # evaluating on the pretraining dataset (else eval.dataset: a transfer)

    def key(self, role: str) -> str:
        """The config key that chooses the `role` ("train" or "test") split."""
        return f"data.eval_{role}_split" if self.same else "eval.dataset"


def eval_target(config: RunConfig) -> EvalTarget:
    """Where the run's evaluation reads: eval.dataset (transfer) or the run's own dataset and data.eval_*_split."""
    ev, data = config.eval, config.data
    dataset = ev.dataset or data.dataset
    same = dataset == data.dataset
    root = ev.root if ev.dataset else data.root
    # Transfer to another dataset: its own choice of streaming, the run's reader settings.
    eval_cfg = data if same else data.model_copy(update={"dataset": dataset, "root": root, "stream": None,
                                                         "class_list": None})
    train_split, test_split = eval_splits(dataset, data.eval_train_split if same else None,
                                          data.eval_test_split if same else None)
    return EvalTarget(dataset, root, eval_cfg, train_split, test_split, same)


def _split_labels(target: EvalTarget, split: str, inputs: TrainingInputs, progress: bool) -> tuple[np.ndarray, int]:
    """Labels and class count of one evaluation split, read as cheaply as the dataset allows.

    The pretraining split's are already in memory; a folder dataset lists its files (no decoding);
    an in-memory one (digits) is small. Any other file dataset is read with `load_split`, the very
    call evaluation makes: a memory-map of the decode cache when the split was read before, else
    its one decode, moved ahead of training (evaluation then reads the cache).
    """
    if target.same and split == inputs.split:
        return inputs.labels, inputs.num_classes
    data = target.data
    if dataset_spec(target.dataset).listing is not None:
        listing = load_listing(target.dataset, split, target.root)
        return np.asarray(listing.labels), len(listing.classes)
    arrays = load_split(target.dataset, split, target.root, download=data.download, cache_dir=data.cache_dir,
                        image_size=data.image_size, progress=progress, verify=data.verify_cache)
    return np.asarray(arrays.labels), arrays.num_classes


def check_eval_splits(config: RunConfig, inputs: TrainingInputs) -> None:
    """Before training: the evaluation splits exist and are labelled, else a ConfigError naming the key."""
    if not config.eval.linear:
        return
    target = eval_target(config)
    splits = dataset_spec(target.dataset).splits
    for role, split in (("train", target.train_split), ("test", target.test_split)):
        if split not in splits:
            raise ConfigError(f"config key '{target.key(role)}': dataset {target.dataset} has no split {split!r}; "
                              f"choose from {', '.join(splits)}")
        labels, num_classes = _split_labels(target, split, inputs, config.train.progress)
        if num_classes == 0 or (labels < 0).any():
            raise ConfigError(f"config key '{target.key(role)}': the {split} split of {target.dataset} has unlabelled "
                              f"images, and evaluation needs labels; choose a labelled split (or eval.linear=false)")


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
                 log: Log = print) -> tuple[Path, dict[str, Any]]:
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
        if config.eval.linear:
            metrics.update(_evaluate(config, trainer, aug_cfg, device, run_dir, log))
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
    _on_main(lambda: check_eval_splits(config, inputs))
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
    return evaluate_backbones(backbones, context)
