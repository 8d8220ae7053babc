"""The pretraining loop: batches -> K views on the device -> method loss -> optimizer step."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from relssl.augment import AugmentConfig, ViewAugment, to_normalized
from relssl.data.stream import StreamLoader, stream_features
from relssl.distributed import (
    all_gather_objects,
    all_reduce_max,
    broadcast_object,
    is_distributed,
    is_main,
    rank,
    world_size,
)
from relssl.errors import CheckpointError, ConfigError
from relssl.methods import EpochContext, Method
from relssl.optim import build_optimizer, build_scheduler
from relssl.progress import plain_line
from relssl.train.batches import BatchStream
from relssl.train.checkpoint import CHECKPOINT_FORMAT, save_backbone_safetensors, save_checkpoint, write_text
from relssl.train.config import RunConfig
from relssl.train.logger import StepLog
from relssl.train.monitor import KnnMonitor, monitor_csv, monitor_due
from relssl.train.parallel import augment_seed, convert_sync_batchnorm, wrap_ddp
from relssl.train.signals import StopRequest
from relssl.train.step_progress import StepProgress
from relssl.train.tracking import Trackers


@dataclass
class TrainState:
    """Where a run is in its schedule; saved in every checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # steps already done in `epoch`
    global_step: int = 0
    elapsed: float = 0.0  # seconds of training so far, across resumes
    # Method.diagnostics() at each epoch end: {"epoch", "step", name: value, ...}; empty for most methods.
    diagnostics: list[dict[str, float]] = field(default_factory=list)
    # The kNN monitor's measurements: {"epoch" (completed epochs), "step", "knn_top1"}; empty when it is off.
    monitor: list[dict[str, float]] = field(default_factory=list)


def autocast_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on GPU: bf16 by default, fp16 on request, none on CPU."""
    amp = config.train.amp
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


class Trainer:
    """Owns the optimisation of one method on one dataset; checkpoints and resumes exactly.

    With several processes (a torchrun launch, process group already joined) each rank trains on
    its slice of the global batch under DistributedDataParallel; every rank computes the same
    schedule, only rank 0 writes the log and checkpoints, and a stop (Ctrl-C, SIGTERM) is agreed
    on by all ranks at the next log flush.

    `monitor` (rank 0; eval.monitor_every) and `trackers` (rank 0; the `log` section) are set by the
    run once its directory exists; without them the trainer measures and reports nothing extra.
    """

    def __init__(
        self,
        config: RunConfig,
        method: Method,
        images: np.ndarray | None,
        labels: np.ndarray | None,
        augment_config: AugmentConfig,
        device: torch.device,
        run_dir: Path | None = None,
        *,
        stream: StreamLoader | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        try:  # a per-view augmentation list longer than the method's views: refused before any work
            augment_config.check_views(method.num_views)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        self.config = config
        self.log = log  # the run's log (rank 0): diagnostics, monitor, plain progress; None: progress to stdout only
        self.device = device
        self.run_dir = run_dir
        self.monitor: KnnMonitor | None = None
        self.trackers: Trackers | None = None
        self._tracked_step = -1  # the last step whose training metrics went to the trackers
        self.k = method.num_views
        self.images = images
        self.channels_last = config.train.channels_last == "on" or (
            config.train.channels_last == "auto" and device.type == "cuda"
        )
        self.method = method.to(device)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if config.backbone.sync_bn:
            self.method = convert_sync_batchnorm(self.method, device)
        self.model = wrap_ddp(self.method, device)  # what a step calls; the method itself without DDP
        self.optimizer = build_optimizer(config.optim, self.method)
        self.amp_dtype = autocast_dtype(config, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.augment_config = augment_config
        self.normalization = augment_config.normalization()
        self.augment = ViewAugment(augment_config).to(device)
        self.aug_generator = torch.Generator(device=device).manual_seed(augment_seed(config.seed))
        # The batches: from the decoded arrays, or streamed from the image files (crops already taken).
        self.stream: BatchStream | StreamLoader
        if stream is not None:
            self.stream = stream
        elif images is not None and labels is not None:
            self.stream = BatchStream(images, labels, config.train.batch_size, seed=config.seed, device=device,
                                      rank=rank(), world_size=world_size(),
                                      labelled_batches=method.labelled_batches)
        else:
            raise ValueError("Trainer needs images and labels, or a stream")
        if self.stream.steps_per_epoch < 1:
            raise ConfigError("no full batch fits in the training split; lower --batch-size")
        self.state = TrainState()
        self.total_steps = config.train.max_steps or config.train.epochs * self.stream.steps_per_epoch
        self.scheduler = build_scheduler(config.optim, self.optimizer, self.total_steps, self.stream.steps_per_epoch)

    # ----------------------------------------------------------------- checkpoints
    def _output_dir(self) -> Path:
        """The run directory, which must be set before anything is written."""
        if self.run_dir is None:
            raise RuntimeError("Trainer.run_dir is not set; give the trainer a run directory before fitting")
        return self.run_dir

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run bit-for-bit (tensors and plain values only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "aug_generator": self.aug_generator.get_state(),
            "aug_generators": all_gather_objects(self.aug_generator.get_state()),  # one per rank
            "train_state": vars(self.state).copy(),
            "normalization": {"mean": list(self.normalization[0]), "std": list(self.normalization[1])},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore a checkpoint written by `state_dict`."""
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError("not a relssl training checkpoint (missing format tag)")
        self.method.load_state_dict(ckpt["method"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:  # checkpoints from before schedules existed ran a constant lr
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])  # checkpoints from before diagnostics hold none
        per_rank = ckpt.get("aug_generators") or [ckpt["aug_generator"]]
        if len(per_rank) == world_size():
            self.aug_generator.set_state(per_rank[rank()])
        else:  # another number of processes: the same batches, fresh augmentation draws per rank
            self.aug_generator.manual_seed(augment_seed(self.config.seed) + 7919 * self.state.global_step)

    def save(self, periodic: bool = False) -> Path:
        """Write last.pt atomically (and an epoch-numbered copy when asked); every rank calls it, rank 0 writes."""
        state = self.state_dict()
        out = self._output_dir()
        path = out / "last.pt"
        if is_main():
            save_checkpoint(state, path)
            if periodic and self.config.train.keep_periodic:
                save_checkpoint(state, out / f"epoch{self.state.epoch:04d}.pt")
        return path

    # ----------------------------------------------------------------- training
    def _epoch_context(self) -> EpochContext:
        mean, std = self.normalization
        extract = None
        if isinstance(self.stream, StreamLoader):
            loader = self.stream
            resize = self.config.data.eval_resize or round(loader.crops.size * 256 / 224)

            def extract(module: torch.nn.Module, desc: str) -> torch.Tensor:
                features = stream_features(module, loader.listing, size=loader.crops.size, resize=resize,
                                           normalize=functools.partial(to_normalized, mean=mean, std=std),
                                           device=self.device, workers=loader.workers,
                                           progress=self.config.train.progress, desc=desc)
                # An unreadable image is never trained on (the stream replaces it); for clustering it
                # gets the mean feature of the others, a neutral stand-in.
                unreadable = ~torch.isfinite(features).all(dim=1)
                features[unreadable] = features[~unreadable].mean(dim=0)
                return features
        return EpochContext(
            epoch=self.state.epoch, images=self.images, device=self.device, seed=self.config.seed,
            normalize=functools.partial(to_normalized, mean=mean, std=std, size=self.augment_config.size),
            optimizer=self.optimizer, progress=self.config.train.progress, extract=extract,
        )

    def _step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        views = self.augment(images, self.k, generator=self.aug_generator, cropped=self.stream.cropped)
        if self.channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.model(views, labels, indices)  # Method.forward is its training_step
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.on_step_end(self.state.global_step + 1, self.total_steps)
        return {"loss": out.loss.detach(), **out.metrics}

    def _stop_agreed(self, stop: StopRequest, sync_point: bool) -> bool:
        """Whether to stop now: at once in one process; with several, only where all ranks agree (log flushes)."""
        if not is_distributed():
            return stop.requested
        return all_reduce_max(stop.requested, self.device) if sync_point else False

    def fit(self) -> TrainState:
        """Train until the epoch or step budget is spent, or a stop is requested (then checkpoint)."""
        cfg = self.config.train
        columns = ["loss", *self.method.metric_names]
        log_path = self._output_dir() / "train_log.csv" if is_main() else None
        log = StepLog(log_path, columns, resume_step=self.state.global_step)  # a resume drops rows past its step
        # --no-progress (train.progress=false): plain lines even on a terminal; other ranks show nothing
        bar = StepProgress(self.total_steps, self.state.global_step, batch_size=cfg.batch_size,
                           steps_per_epoch=self.stream.steps_per_epoch,
                           show=(True if cfg.progress else "lines") if is_main() else False,
                           write=self.log or plain_line)  # plain lines join the run's log
        if is_main() and self.monitor is not None:  # a resume drops measurements past its checkpoint
            write_text(self._output_dir() / "monitor.csv", monitor_csv(self.state.monitor))
        self.method.train()
        started = time.perf_counter() - self.state.elapsed
        stopping = False
        try:
            with StopRequest() as stop:
                while self.state.global_step < self.total_steps and not stopping:
                    epoch = self.state.epoch
                    if self.state.step_in_epoch == 0:
                        self.method.on_epoch_start(self._epoch_context())
                        self.method.train()
                    for images, labels, indices in self.stream.iterate(epoch, self.state.step_in_epoch):
                        metrics = self._step(images, labels, indices)
                        self.state.step_in_epoch += 1
                        self.state.global_step += 1
                        self.state.elapsed = time.perf_counter() - started
                        log.add(self.state.global_step, epoch, self.state.elapsed, metrics)
                        bar.update()
                        flushed = self.state.global_step % cfg.log_every == 0
                        if flushed:
                            self._flushed(log.flush(), bar)
                        if cfg.checkpoint_every_steps and self.state.global_step % cfg.checkpoint_every_steps == 0:
                            log.flush()  # never checkpoint a state whose loss was not checked
                            self.save()
                        stopping = self._stop_agreed(stop, flushed)
                        if self.state.global_step >= self.total_steps or stopping:
                            break
                    if self.state.step_in_epoch >= self.stream.steps_per_epoch:
                        self.state.epoch += 1
                        self.state.step_in_epoch = 0
                        self._flushed(log.flush(), bar)
                        self._record_diagnostics(epoch)
                        self._record_monitor(self.state.epoch)
                        if self.state.epoch % cfg.checkpoint_every == 0:
                            self.save(periodic=True)
                        stopping = stopping or self._stop_agreed(stop, True)
                self._flushed(log.flush(), bar, final=True)
                if self.finished and self.state.step_in_epoch > 0:  # the budget ended inside an epoch
                    self._record_diagnostics(self.state.epoch)
                    self._record_monitor(self.state.epoch + 1)
                self.save()
                if stopping and is_main():
                    bar.write(f"stopped ({stop.signal_name or 'a signal on another rank'}) at step "
                              f"{self.state.global_step}; resume with: relssl train --resume {self.run_dir}")
        finally:
            bar.close()
            log.close()
        return self.state

    def _record_diagnostics(self, epoch: int) -> None:
        """Ask the method (every rank) for its diagnostics of `epoch`; rank 0 logs them and rewrites diagnostics.csv."""
        values = self.method.diagnostics()
        if not values:
            return
        self.state.diagnostics.append({"epoch": epoch, "step": self.state.global_step, **values})
        if not is_main():
            return
        if self.log is not None:
            self.log(f"epoch {epoch} (step {self.state.global_step}) diagnostics: "
                     + " ".join(f"{k}={v:.6g}" for k, v in values.items()))
        write_text(self._output_dir() / "diagnostics.csv", diagnostics_csv(self.state.diagnostics))
        if self.trackers is not None:
            self.trackers.log(self.state.global_step, {f"diagnostics/{k}": v for k, v in values.items()})

    def _flushed(self, values: dict[str, float], bar: StepProgress, final: bool = False) -> None:
        """The metrics of a log flush: to the progress display and (rank 0) the trackers."""
        step = self.state.global_step
        bar.flushed(step, values, final=final)
        if self.trackers is not None and values and step != self._tracked_step:
            self._tracked_step = step
            self.trackers.log(step, {**{f"train/{k}": v for k, v in values.items()},
                                     "train/lr": self.optimizer.param_groups[0]["lr"]})

    def _record_monitor(self, epoch: int) -> None:
        """The kNN monitor after `epoch` completed epochs, when due: rank 0 measures, every rank records it.

        The other ranks wait in one broadcast for rank 0's value (or its error, raised on every rank,
        so none is left waiting in a later collective).
        """
        every = self.config.eval.monitor_every
        step = self.state.global_step
        measured = bool(self.state.monitor) and self.state.monitor[-1]["step"] == step
        if measured or not monitor_due(epoch, every, self.finished):
            return
        value: float | None = None
        error: str | None = None
        failure: Exception | None = None
        started = time.perf_counter()
        if is_main() and self.monitor is not None:
            try:
                value = self.monitor.measure(self.method.backbone)
            except Exception as err:  # told to every rank below, then raised here as it was
                error, failure = f"{type(err).__name__}: {err}", err
        value, error = broadcast_object((value, error))
        if failure is not None:
            raise failure
        if error is not None:
            raise RuntimeError(f"the kNN monitor failed on rank 0 ({error})")
        if value is None:
            return
        self.state.monitor.append({"epoch": epoch, "step": step, "knn_top1": value})
        if not is_main():
            return
        if self.log is not None:
            self.log(f"monitor: epoch {epoch} (step {step}) kNN top-1 {value:.2f}% "
                     f"({time.perf_counter() - started:.1f}s)")
        write_text(self._output_dir() / "monitor.csv", monitor_csv(self.state.monitor))
        if self.trackers is not None:
            self.trackers.log(step, {"monitor/knn_top1": value})

    @property
    def finished(self) -> bool:
        """Whether the step budget has been spent."""
        return self.state.global_step >= self.total_steps

    def export_backbone(self, metadata: dict[str, str] | None = None) -> Path:
        """Write the trained backbone alone as backbone.safetensors (rank 0 writes), with its `metadata`.

        The run passes `BackboneInfo.to_metadata()`, which lets `relssl.load_backbone` read the file alone.
        """
        path = self._output_dir() / "backbone.safetensors"
        if is_main():
            save_backbone_safetensors(self.method.backbone, path, metadata)
        return path


def diagnostics_csv(rows: list[dict[str, float]]) -> str:
    """The per-epoch diagnostics as CSV text: one row per entry, columns in order of first appearance."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    lines = [",".join(columns)]
    lines += [",".join("" if row.get(c) is None else f"{row[c]:.6g}" for c in columns) for row in rows]
    return "\n".join(lines) + "\n"
