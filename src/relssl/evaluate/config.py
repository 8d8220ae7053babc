"""Config sections of the evaluation protocols: the linear probe, the `eval` section around it, finetuning.

`EvalConfig` is the `eval` section of a run; it extends the probe's own settings
(`LinearEvalConfig`), so the same object configures `linear_evaluation` directly.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from relssl.config import Section
from relssl.data.config import check_dataset_name

__all__ = ["EvalConfig", "FinetuneConfig", "LinearEvalConfig"]


class LinearEvalConfig(Section):
    """Hyper-parameters of the linear probe; the defaults are paper 1's (100 epochs, Adam 1e-3, batch 128).

    ``weight_decay`` is an L2 term added to the gradient (as ``torch.optim.Adam`` / ``SGD`` do); under
    SGD and LARS the bias gets none. ``standardize`` z-scores every feature with the train split's mean
    and standard deviation first. ``optimizer``: ``adam`` (paper 1), ``sgd`` (Nesterov momentum) or
    ``lars`` (``timm.optim.Lars`` with Nesterov momentum; the bias is neither decayed nor adapted).
    ``momentum`` is used by SGD and LARS only. ``schedule="cosine"`` anneals the lr to 0 over all
    steps, per step. ``lr_reference_batch``: when set, ``lr`` is the lr at that batch size and is
    scaled linearly, ``lr * batch_size / lr_reference_batch`` (paper 2: lr 1 at batch 4096).
    ``top5``: ``None`` reports top-5 above 10 classes (paper 1), ``True`` above 5 classes, ``False`` never.
    """

    epochs: int = Field(default=100, ge=1, strict=True)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=128, ge=1, strict=True)
    weight_decay: float = Field(default=0.0, ge=0)
    standardize: bool = Field(default=False, strict=True)
    optimizer: Literal["adam", "sgd", "lars"] = "adam"  # sgd and lars use Nesterov momentum
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: annealed to 0 per step
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd / lars only
    lr_reference_batch: int | None = Field(default=None, ge=1)  # set: `lr` is the lr at this batch, scaled linearly
    top5: bool | None = Field(default=None, strict=True)  # None above 10 classes (paper 1), true above 5, false never

    @field_validator("optimizer")
    @classmethod
    def _lars_available(cls, name: str) -> str:
        if name == "lars" and importlib.util.find_spec("timm") is None:
            raise ValueError("'lars' uses timm.optim.Lars; install timm (pip install timm) or choose sgd")
        return name

    @field_validator("momentum")
    @classmethod
    def _nesterov_needs_momentum(cls, value: float, info: ValidationInfo) -> float:
        optimizer = info.data.get("optimizer")
        if value == 0 and optimizer in ("sgd", "lars"):
            raise ValueError(f"momentum must be > 0 for {optimizer} (Nesterov momentum)")
        return value

    @property
    def effective_lr(self) -> float:
        """The lr at the start of training: ``lr``, linearly scaled to ``batch_size`` when a reference is set."""
        if self.lr_reference_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_reference_batch

    def top5_reported(self, num_classes: int) -> bool:
        """Whether top-5 is measured for this many classes (never for 5 or fewer: it would be 100%)."""
        if self.top5 is None:
            return num_classes > 10
        return self.top5 and num_classes > 5

    def protocol_summary(self) -> dict[str, Any]:
        """The probe settings a metrics file records beside its numbers."""
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "standardize": self.standardize,
                "optimizer": self.optimizer, "schedule": self.schedule, "effective_lr": self.effective_lr}


class FinetuneConfig(Section):
    """Finetune protocol: the whole network trained on the labelled split, scored on the test split.

    The paper's text gives only the epoch count (20 on STL-10's 5k labelled images); the
    optimiser (Adam), learning rate and augmentation are our choices.
    """

    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=2)
    augment: bool = True  # random resized crop (scale 0.25-1) + flip, no colour distortion, on the labelled images


class EvalConfig(LinearEvalConfig):
    """Evaluation after pretraining: `linear` (paper 1: 100 epochs, Adam 1e-3, batch 128), `finetune` or `semi`.

    The linear probe's optimizer, schedule and lr scaling give paper 2's recipe (RCL §5.2: 90 epochs,
    LARS, Nesterov momentum 0.9, cosine lr 1 at batch 4096; configs/eval/linear_paper2.yaml). `semi`
    finetunes the whole network on a class-balanced `label_fraction` of the labelled train split
    (paper 2, Table 2) with the `finetune.*` settings. See docs/protocols/paper2.md.
    """

    linear: bool = True  # evaluate after pretraining at all
    compare_random: bool | None = None  # None: on for the built-in digits set only
    report_standardized: bool = True  # also report linear_std_top1 (features z-scored with train stats)
    feature_batch_size: int = Field(default=512, ge=1)
    dataset: str | None = None  # transfer: evaluate on another dataset than the pretraining one
    root: str | None = None  # data root of eval.dataset; alone: another folder of the pretraining dataset
    protocol: Literal["linear", "finetune", "semi"] = "linear"
    label_fraction: float = Field(default=0.01, gt=0, le=1)  # semi: labelled share of every class
    subset_seed: int = Field(default=0, ge=0)  # semi: seed of the labelled subset (fixed across runs by default)
    # label-free feature statistics (relssl.evaluate.feature_stats) on a seeded sample of this many training images
    stats_images: int = Field(default=2048, ge=2, strict=True)
    # kNN monitor during pretraining (relssl.train.monitor): every N epochs and at the end; 0 = off (it costs
    # two feature passes over the evaluation splits each time). monitor_samples caps each split's images.
    monitor_every: int = Field(default=0, ge=0, strict=True)
    monitor_samples: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str | None) -> str | None:
        return None if name is None else check_dataset_name(name)
