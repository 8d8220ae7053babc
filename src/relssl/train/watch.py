"""What watches a run while it trains: the kNN monitor, the optional trackers, and loss.png after it.

`watch_training` attaches them to a trainer on rank 0 once the run directory exists; the other
ranks get neither (they only take part in the monitor's one broadcast, see Trainer).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from relssl.augment import AugmentConfig
from relssl.data.stream import StreamLoader
from relssl.distributed import is_main
from relssl.errors import CheckpointError, ConfigError, DataError
from relssl.evaluate import open_eval_data
from relssl.train.config import RunConfig
from relssl.train.curves import write_loss_plot
from relssl.train.eval_target import eval_target, unlabelled_monitor_note
from relssl.train.monitor import KnnMonitor
from relssl.train.tracking import Trackers
from relssl.train.trainer import Trainer

__all__ = ["open_monitor", "plot_losses", "track_metrics", "watch_training"]

Log = Callable[[str], None]


def open_monitor(config: RunConfig, trainer: Trainer, aug_cfg: AugmentConfig, device: torch.device,
                 log: Log, unlabelled: str | None = None) -> KnnMonitor | None:
    """The kNN monitor on the run's evaluation splits; None, with at most one note, when they have no labels.

    `unlabelled` is why the run has no labelled splits (`check_eval_splits`). Then the run's one
    note says so: the end-of-run evaluation note when eval.linear is on, else this monitor's.
    """
    if unlabelled is not None:
        if not config.eval.linear:
            log(unlabelled_monitor_note(unlabelled))
        return None
    target = eval_target(config)
    crop = trainer.stream.crops.size if isinstance(trainer.stream, StreamLoader) else aug_cfg.size
    try:
        data = open_eval_data(target.dataset, target.root, target.data, train_split=target.train_split,
                              test_split=target.test_split, crop=crop, progress=config.train.progress)
    except (DataError, ConfigError) as err:  # an unlabelled folder has nothing to score a kNN with
        log(f"note: the kNN monitor (eval.monitor_every) is skipped: {err}")
        return None
    mean, std = aug_cfg.normalization()
    monitor = KnnMonitor(data, mean=mean, std=std, size=aug_cfg.size, device=device,
                         samples=config.eval.monitor_samples, seed=config.seed,
                         batch_size=config.eval.feature_batch_size)
    bank, query = monitor.sizes
    where = f" of {target.root}" if not target.same and target.root else ""
    log(f"kNN monitor every {config.eval.monitor_every} epoch(s): {bank} {target.train_split} images{where} as the "
        f"memory bank, {query} {target.test_split} images scored" + (f" (k = {bank})" if bank < monitor.k else ""))
    return monitor


def watch_training(config: RunConfig, trainer: Trainer, aug_cfg: AugmentConfig, device: torch.device, log: Log,
                   held: contextlib.ExitStack, unlabelled: str | None = None) -> None:
    """On rank 0: give `trainer` its monitor and trackers; the trackers close when `held` does."""
    if not is_main():
        return
    if config.eval.monitor_every:
        trainer.monitor = open_monitor(config, trainer, aug_cfg, device, log, unlabelled)
    if config.log.tensorboard or config.log.wandb:
        trackers = Trackers(config.log, trainer._output_dir(), resume_step=trainer.state.global_step,
                            settings=config.to_dict())
        held.callback(trackers.close)
        trainer.trackers = trackers


def track_metrics(trainer: Trainer, metrics: dict[str, Any]) -> None:
    """Send the run's final numbers (evaluation, time) to the trackers as `eval/<name>` at the last step."""
    if trainer.trackers is None:
        return
    values = {f"eval/{k}": float(v) for k, v in metrics.items()
              if isinstance(v, numbers.Real) and not isinstance(v, bool)}
    trainer.trackers.log(trainer.state.global_step, values)


def plot_losses(run_dir: Path, log: Log) -> None:
    """Draw RUN/loss.png (rank 0); a failed write is a note, not the end of a run that trained."""
    if not is_main():
        return
    try:
        path = write_loss_plot(run_dir)
    except CheckpointError as err:
        log(f"note: {err}")
        return
    if path is not None:
        log(f"loss curve: {path}")
