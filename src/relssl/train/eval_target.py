"""Where a run's evaluation reads (its own splits, or eval.dataset / eval.root), checked before the first step.

The run evaluates on its own data (`same`) unless eval.dataset names another dataset or eval.root
another folder than data.root: then evaluation, the kNN monitor and their feature caches read that
dataset at that root, like a transfer (pretrain on a flat folder of photos, evaluate on a labelled one).

A run is *unlabelled* when it evaluates on its own data at the default splits (no eval.dataset,
data.eval_train_split or data.eval_test_split; eval.root unset or naming data.root) and that data
offers no labelled pair of splits: its evaluation train split has no labels at all (a folder without
class sub-folders: no classes, every label -1), or it is a folder read whole, with no train/ and
test/|val/ folders to hold a test split. Such a run trains, skips label-needing evaluation and the
kNN monitor with one note, and reports label-free feature statistics only. Any other missing or
unlabelled evaluation split stays an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from relssl.data import DataConfig, dataset_spec, load_listing, load_split
from relssl.data.load import resolve_root
from relssl.errors import ConfigError, DataError
from relssl.evaluate import eval_splits
from relssl.train.config import RunConfig
from relssl.train.inputs import TrainingInputs

__all__ = ["EvalTarget", "check_eval_splits", "eval_target", "unlabelled_monitor_note", "unlabelled_note",
           "unlabelled_reason"]


@dataclass(frozen=True)
class EvalTarget:
    """The dataset and labelled splits `_evaluate` will read, and the config key a user sets for each split."""

    dataset: str
    root: str | None
    data: DataConfig
    train_split: str
    test_split: str
    same: bool  # evaluating on the pretraining data (else eval.dataset / eval.root: a transfer)

    def key(self, role: str) -> str:
        """The config key that chooses the `role` ("train" or "test") split."""
        if self.same:
            return f"data.eval_{role}_split"
        return "eval.root" if self.root else "eval.dataset"


def _same_folder(dataset: str, root: str | None, other: str | None) -> bool:
    """Whether two roots of `dataset` are one folder (after defaults, `~`, links and relative paths)."""
    if dataset_spec(dataset).source is None:  # held in memory (digits): a root changes nothing
        return True
    try:
        return resolve_root(dataset, root).resolve() == resolve_root(dataset, other).resolve()
    except DataError:  # unset where the dataset has no default root: reading it fails later, naming the key
        return root == other


def eval_target(config: RunConfig) -> EvalTarget:
    """Where the run's evaluation reads: eval.dataset / eval.root (transfer), else the run's own data.

    eval.root alone is another folder of the pretraining dataset; eval.dataset without eval.root is
    that dataset at its default root. Only the pretraining dataset at the pretraining root (eval.root
    unset, or naming the same folder) is the run's own data, where data.eval_*_split apply.
    """
    ev, data = config.eval, config.data
    dataset = ev.dataset or data.dataset
    root = ev.root if ev.dataset or ev.root else data.root
    same = dataset == data.dataset and (ev.root is None or _same_folder(dataset, ev.root, data.root))
    if same:
        root = data.root
    # Transfer to another dataset or folder: its own choice of streaming and classes, the run's reader settings.
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


def _whole_folder(target: EvalTarget) -> bool:
    """A file dataset whose evaluation train split is its whole folder ("all": no split folders), so no test split."""
    spec = dataset_spec(target.dataset)
    if spec.listing is None or "all" not in spec.splits or target.train_split == "all":
        return False
    return load_listing(target.dataset, target.train_split, target.root).split == "all"


def unlabelled_reason(config: RunConfig, inputs: TrainingInputs) -> str | None:
    """Why the run has no labelled splits to evaluate on (the module docstring's rule); None when it has them."""
    ev, data = config.eval, config.data
    if ev.dataset or data.eval_train_split or data.eval_test_split:
        return None  # the user chose where to evaluate: a split without labels there is an error
    target = eval_target(config)
    if not target.same:
        return None  # eval.root: another folder, whose splits must be labelled
    labels, num_classes = _split_labels(target, target.train_split, inputs, config.train.progress)
    where = f"{target.root}" if target.root else target.dataset
    if num_classes == 0 or (labels < 0).all():
        return f"{where} has images directly in it, not in class sub-folders, so they have no labels"
    if _whole_folder(target):
        return f"{where} has no train/ and test/ (or val/) folders, so there is no labelled test split"
    return None


def unlabelled_note(reason: str, run_dir: str, *, monitor: bool = False) -> str:
    """The one line an unlabelled run prints instead of evaluating: why, and how to evaluate elsewhere.

    `monitor`: the kNN monitor was asked for (eval.monitor_every) and skipped for the same reason.
    """
    also = ", as was the kNN monitor (eval.monitor_every)" if monitor else ""
    return (f"note: {reason}; evaluation needs labels, so it was skipped{also} (metrics.json has label-free feature "
            f"statistics instead). To measure accuracy: relssl eval linear --checkpoint {run_dir} --dataset imagefolder "
            f"--data-root DIR, with DIR/train/<class>/ and DIR/test/<class>/ (or pretrain with --set eval.root=DIR, or "
            "--set eval.dataset=NAME)")


def unlabelled_monitor_note(reason: str) -> str:
    """The one line an unlabelled run asking for the kNN monitor, but not for evaluation, prints."""
    return (f"note: {reason}; the kNN monitor (eval.monitor_every) is skipped, as it needs labels (metrics.json "
            "will have label-free feature statistics)")


def check_eval_splits(config: RunConfig, inputs: TrainingInputs) -> str | None:
    """Before training: the evaluation splits exist and are labelled, else a ConfigError naming the key.

    Returns the reason an unlabelled run (module docstring) skips evaluation and the kNN monitor,
    or None. The splits are checked only for evaluation (eval.linear); the monitor, on its own,
    notes an unusable split when it opens (relssl.train.watch).
    """
    if not config.eval.linear and not config.eval.monitor_every:
        return None
    reason = unlabelled_reason(config, inputs)
    if reason is not None or not config.eval.linear:
        return reason
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
    return None
