"""Where a run's evaluation reads (its own splits or eval.dataset), checked before the first training step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relssl.data import DataConfig, dataset_spec, load_listing, load_split
from relssl.errors import ConfigError
from relssl.evaluate import eval_splits
from relssl.train.config import RunConfig
from relssl.train.inputs import TrainingInputs

__all__ = ["EvalTarget", "check_eval_splits", "eval_target"]


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


