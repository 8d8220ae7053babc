"""Pretraining: the run's config, batches, the training loop, checkpoints, and the `relssl train` run."""

from relssl.train.config import RunConfig, TrainConfig, build_config, run_config_class
from relssl.train.run import build_backbone, build_method, run_training

__all__ = ["RunConfig", "TrainConfig", "build_backbone", "build_config", "build_method", "run_config_class",
           "run_training"]
