"""One `relssl train` run: pretrain, export, linear-evaluate (learned and random init), write metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relssl.augment import AugmentConfig
from relssl.config import RunConfig, build_config
from relssl.data import ImageArrays, load_split
from relssl.evaluate.finetune import FinetuneSettings, finetune
from relssl.evaluate.subset import balanced_subset
from relssl.methods import create_method
from relssl.models import create_backbone
from relssl.train.evaluation import EvalData, evaluate_linear, feature_cache, linear_eval_config
from relssl.train.setup import channel_stats, create_run_dir, resolve_device, seed_everything, write_config, write_json
from relssl.train.trainer import Trainer


def default_train_split(dataset: str) -> str:
    """The split a dataset is pretrained on when data.train_split is unset.

    STL-10 pretrains on its 100k unlabelled images; SlimageNet64 on the 160-per-class part of
    its classes (its official train/test folders hold different classes).
    """
    return {"stl10": "unlabeled", "slimagenet64": "train160"}.get(dataset, "train")


def default_eval_splits(dataset: str) -> tuple[str, str]:
    """Labelled (train, test) splits for linear evaluation when data.eval_*_split are unset."""
    return ("train160", "test40") if dataset == "slimagenet64" else ("train", "test")


def semi_supervised_labels(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep a seeded, class-stratified `fraction` of the labels and mark the rest unlabelled (-1)."""
    labels = np.asarray(labels, dtype=np.int64)
    if fraction >= 1.0:
        return labels.copy()
    out = np.full_like(labels, -1)
    rng = np.random.default_rng(seed)
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        keep = rng.choice(members, int(round(fraction * len(members))), replace=False)
        out[keep] = cls
    return out


def build_backbone(config: RunConfig) -> torch.nn.Module:
    """Create the configured backbone with weights drawn from the run's seed.

    Seeding just before construction makes the random-init baseline exactly the weights
    the learned backbone started from.
    """
    torch.manual_seed(config.seed)
    return create_backbone(config.backbone.name, **config.backbone.create_kwargs())


def augment_config(config: RunConfig, train: ImageArrays) -> AugmentConfig:
    """Augmentation settings, with mean/std measured on the training split unless given."""
    aug = config.augment.model_dump()
    if aug["mean"] is None or aug["std"] is None:
        mean, std = channel_stats(train.images, seed=config.seed)
        aug["mean"] = aug["mean"] or mean
        aug["std"] = aug["std"] or std
    return AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})


def resume_config(checkpoint: dict[str, Any], overrides: dict[str, Any]) -> RunConfig:
    """The config a resumed run continues with: its saved settings plus explicit overrides."""
    return build_config(checkpoint["config"], overrides)


def compare_random_enabled(config: RunConfig) -> bool:
    """`eval.compare_random`, defaulting to on for the built-in digits set only."""
    flag = config.eval.compare_random
    return config.data.dataset == "digits" if flag is None else flag


def run_training(config: RunConfig, checkpoint: dict[str, Any] | None = None, run_dir: Path | None = None,
                 log=print) -> tuple[Path, dict[str, Any]]:
    """Train (or, given a loaded checkpoint and its run directory, resume) a run; evaluate it.

    Returns (run_dir, metrics). When resuming, `config` should be the checkpoint's own config
    with the user's explicit overrides applied (see `resume_config`).
    """
    device = resolve_device(config.train.device)
    seed_everything(config.seed)

    data = config.data
    split = data.train_split or default_train_split(data.dataset)
    train = load_split(data.dataset, split, data.root, download=data.download, cache_dir=data.cache_dir,
                       image_size=data.image_size, progress=config.train.progress)
    labels = np.asarray(train.labels, dtype=np.int64)
    if config.relational.labelled_fraction > 0:
        labels = semi_supervised_labels(labels, config.relational.labelled_fraction, config.seed)
    aug_cfg = augment_config(config, train)
    log(f"pretraining {config.method} / {config.backbone.name} on {data.dataset}:{split} "
        f"({len(train)} images {train.images.shape[1]}x{train.images.shape[2]}) on {device}")

    method = create_method(config, build_backbone(config), num_images=len(train), num_classes=train.num_classes)
    if method.needs_labels and (labels < 0).any():
        raise ValueError(f"method {config.method!r} needs labels, but the {data.dataset}:{split} split has "
                         "unlabelled images; pretrain on a labelled split (data.train_split)")
    trainer = Trainer(config, method, train.images, labels, aug_cfg, device)
    # The run directory appears only once everything above has validated, so a bad start
    # leaves nothing behind.
    if checkpoint is None or run_dir is None:
        checkpoint, run_dir = None, create_run_dir(config)
    else:
        write_config(config, run_dir)  # record overrides such as a longer schedule
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
    if not trainer.finished:
        write_json(metrics, run_dir / "metrics.json")
        return run_dir, metrics
    trainer.export_backbone()
    log(f"trained {state.global_step} steps in {time.perf_counter() - t0:.1f}s this session")

    if config.eval.linear:
        metrics.update(_evaluation_metrics(config, trainer, aug_cfg, device, run_dir, log))
    write_json(metrics, run_dir / "metrics.json")
    log(f"metrics: {run_dir / 'metrics.json'}")
    return run_dir, metrics


def _evaluation_metrics(config: RunConfig, trainer: Trainer, aug_cfg: AugmentConfig, device: torch.device,
                        run_dir: Path, log) -> dict[str, Any]:
    """Evaluate the learned backbone (and its random init if enabled) with the configured protocol.

    Linear: top-1 on raw features (the paper's protocol) and, with eval.report_standardized,
    on features z-scored with train statistics. Finetune: the whole network trained on the
    labelled split; semi: the same on a class-balanced eval.label_fraction of it (paper 2,
    Table 2). eval.dataset (transfer, grain) evaluates on another dataset than pretraining.
    """
    ev = config.eval
    dataset = ev.dataset or config.data.dataset
    root = ev.root if ev.dataset else config.data.root
    default_train, default_test = default_eval_splits(dataset)
    same = dataset == config.data.dataset
    data = EvalData.load(dataset, root,
                         train_split=(config.data.eval_train_split if same else None) or default_train,
                         test_split=(config.data.eval_test_split if same else None) or default_test,
                         download=config.data.download, cache_dir=config.data.cache_dir,
                         image_size=config.data.image_size, progress=config.train.progress)
    out: dict[str, Any] = {"eval_dataset": dataset, "eval_protocol": ev.protocol}
    backbones = {"": trainer.method.backbone}
    if compare_random_enabled(config):
        backbones["random_init_"] = build_backbone(config)
    train_images, train_labels = data.train.images, data.train.labels
    ft = config.finetune
    ft_batch = ft.batch_size
    if ev.protocol == "semi":
        index = balanced_subset(np.asarray(train_labels), ev.label_fraction, ev.subset_seed)
        train_images, train_labels = np.asarray(train_images[index]), np.asarray(train_labels)[index]
        ft_batch = min(ft.batch_size, len(index))  # 1% of a small split can hold fewer images than a batch
        out.update(semi_label_fraction=ev.label_fraction, semi_labelled_images=len(index),
                   semi_subset_seed=ev.subset_seed)
        log(f"semi-supervised subset: {len(index)} of {len(data.train)} labelled images "
            f"({ev.label_fraction:g} of every class, subset seed {ev.subset_seed})")
    for prefix, backbone in backbones.items():
        who = "random-init backbone" if prefix else "learned backbone"
        if ev.protocol in ("finetune", "semi"):
            result = finetune(
                backbone, train_images, train_labels, data.test.images, data.test.labels,
                num_classes=data.train.num_classes, mean=aug_cfg.mean, std=aug_cfg.std, device=device,
                settings=FinetuneSettings(epochs=ft.epochs, lr=ft.lr, batch_size=ft_batch, augment=ft.augment,
                                          seed=config.seed),
                progress=config.train.progress, top5=True if ev.protocol == "semi" else None,
            )
            out.update({f"{prefix}{ev.protocol}_{k}": v for k, v in result.items()})
            log(f"{ev.protocol} evaluation, {who}: top-1 {result['top1']:.2f}%")
            continue
        tag = "random-init" if prefix else f"learned-step{trainer.state.global_step}"
        variants = [("", ev.standardize)]
        if ev.report_standardized and not ev.standardize:
            variants.append(("std_", True))
        for suffix, standardize in variants:
            lin_cfg = linear_eval_config(ev, standardize=standardize, seed=config.seed)
            result = evaluate_linear(
                backbone, data, mean=aug_cfg.mean, std=aug_cfg.std, config=lin_cfg, device=device,
                cache=feature_cache(run_dir), cache_key=f"{tag}-{dataset}", size=aug_cfg.size,
                feature_batch_size=ev.feature_batch_size, progress=config.train.progress,
            )
            out[f"{prefix}linear_{suffix}top1"] = result.top1
            if result.top5 is not None:
                out[f"{prefix}linear_{suffix}top5"] = result.top5
            kind = "standardised" if standardize else "raw"
            log(f"linear evaluation ({kind} features), {who}: top-1 {result.top1:.2f}%")
    if ev.protocol == "linear":
        out["linear_protocol"] = {"epochs": ev.epochs, "lr": ev.lr, "batch_size": ev.batch_size,
                                  "standardize": ev.standardize, "optimizer": ev.optimizer,
                                  "schedule": ev.schedule, "effective_lr": linear_eval_config(ev).effective_lr}
    else:
        out["finetune_protocol"] = {"epochs": ft.epochs, "lr": ft.lr, "batch_size": ft_batch, "augment": ft.augment}
    return out
