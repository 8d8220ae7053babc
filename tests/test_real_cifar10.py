"""Real-data check: Relational Reasoning on the CIFAR-10 image folder beats random init by >= 8 points.

Runs only when RELSSL_CIFAR10 points at a folder with train/ and test/ class sub-folders
(CI sets it to the shared copy). A fixed number of steps, not a wall-clock budget, keeps the
test's meaning the same on a slower machine; on the 2-core CI machine it takes a few minutes.
"""

import json
import os
from pathlib import Path

import pytest

from relssl.train.config import build_config
from relssl.train.run import run_training

CIFAR10 = os.environ.get("RELSSL_CIFAR10")
STEPS = int(os.environ.get("RELSSL_REAL_TEST_STEPS", "3000"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CIFAR10 or not Path(CIFAR10, "train").is_dir(),
        reason="set RELSSL_CIFAR10 to a CIFAR-10 image folder (train/ and test/) to run the real-data test",
    ),
]


def test_relational_conv4_beats_random_init_on_cifar10(tmp_path):
    cfg = build_config(
        {},
        {
            "data.dataset": "imagefolder", "data.root": CIFAR10, "data.cache_dir": str(tmp_path / "cache"),
            "backbone.name": "conv4", "relational.k": 4, "train.batch_size": 64, "train.max_steps": STEPS,
            "train.runs_dir": str(tmp_path / "runs"), "train.run_name": "real", "train.progress": False,
            "train.log_every": 100, "eval.compare_random": True,
        },
    )
    run_dir, metrics = run_training(cfg)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == metrics
    print(f"\nreal-data test ({STEPS} steps, {metrics['train_seconds']} s): learned {metrics['linear_top1']:.2f}% "
          f"vs random init {metrics['random_init_linear_top1']:.2f}%")
    assert metrics["linear_top1"] >= metrics["random_init_linear_top1"] + 8.0
