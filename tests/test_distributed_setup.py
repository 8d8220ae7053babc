"""Starting a multi-process run: torchrun's environment, the device of each process, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from relssl.distributed import Launch, launch_from_env, start_process_group
from relssl.errors import ConfigError
from relssl.train.batches import BatchStream
from relssl.train.config import build_config
from relssl.train.run import run_training


def test_launch_reads_torchruns_environment() -> None:
    assert launch_from_env({}) == Launch(0, 1, 0) and not Launch().multi_process
    launch = launch_from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert launch == Launch(3, 8, 1) and launch.multi_process
    with pytest.raises(ConfigError, match="RANK=8 and WORLD_SIZE=8"):
        launch_from_env({"RANK": "8", "WORLD_SIZE": "8"})
    with pytest.raises(ConfigError, match="must be integers"):
        launch_from_env({"WORLD_SIZE": "two"})


def test_one_process_joins_no_group() -> None:
    device, joined = start_process_group("auto", "cpu", Launch())
    assert device == torch.device("cpu") and joined is False
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without GPUs")
def test_nccl_without_gpus_is_one_line_before_anything_starts() -> None:
    with pytest.raises(ConfigError, match="train.backend=nccl needs CUDA devices"):
        start_process_group("nccl", "auto", Launch(0, 2, 0))
    with pytest.raises(ConfigError, match="train.device=cuda but no CUDA device"):
        start_process_group("auto", "cuda", Launch(0, 2, 0))
    assert not torch.distributed.is_initialized()
    with pytest.raises(ConfigError, match="config key 'train.backend'"):
        build_config({}, {"train.backend": "mpi"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without GPUs")
def test_sync_bn_on_the_cpu_is_a_clear_error(tmp_path: Path) -> None:
    cfg = build_config({}, {"backbone.sync_bn": True, "train.device": "cpu", "train.runs_dir": str(tmp_path),
                            "relational.k": 2, "train.max_steps": 1, "train.progress": False})
    with pytest.raises(ConfigError, match="backbone.sync_bn=true needs CUDA devices"):
        run_training(cfg, log=lambda line: None)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_global_batch_must_split_into_per_rank_batches_of_two() -> None:
    images, labels = np.zeros((40, 8, 8, 3), np.uint8), np.zeros(40, np.int64)
    assert BatchStream(images, labels, 12, rank=1, world_size=3).local_batch_size == 4
    with pytest.raises(ConfigError, match="train.batch_size=10 is the global batch of a step; it must divide "
                                          "evenly over the 4 processes"):
        BatchStream(images, labels, 10, world_size=4)
    with pytest.raises(ConfigError, match="fewer than 2 images per process"):
        BatchStream(images, labels, 4, world_size=4)
    with pytest.raises(ConfigError, match="exceeds the 40 training images"):
        BatchStream(images, labels, 64)
