"""Optional experiment trackers: TensorBoard (`log.tensorboard`) and Weights & Biases (`log.wandb`).

Both receive the same scalars: the training loss and metrics at every log flush, the learning
rate, the kNN monitor, the method's diagnostics and the final evaluation. Only rank 0 writes.
Each needs its extra (`pip install 'relssl[tensorboard]'`, `'relssl[wandb]'`); a missing one is
a ConfigError before training starts, not an import error after it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from relssl.config import Section
from relssl.errors import ConfigError

__all__ = ["LogConfig", "Trackers", "check_trackers"]


class LogConfig(Section):
    """The `log` section: experiment trackers beside train_log.csv (all off by default).

    `wandb_mode` None leaves the choice to wandb (its WANDB_MODE variable, else online); `offline`
    writes the run under RUN/wandb for a later `wandb sync`. `wandb_name` defaults to the run
    directory's name; a resumed run continues the same wandb run.
    """

    tensorboard: bool = False  # event files in RUN/tensorboard
    wandb: bool = False
    wandb_project: str = Field(default="relssl", min_length=1)
    wandb_name: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] | None = None


_EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(config: LogConfig) -> None:
    """A ConfigError naming the pip command when a requested tracker's package is not installed."""
    for key, module in _EXTRAS.items():
        if getattr(config, key) and importlib.util.find_spec(module) is None:
            raise ConfigError(f"config key 'log.{key}': the {module} package is not installed; "
                              f"install it with: pip install 'relssl[{key}]' (or set log.{key}=false)")


def _wandb_id(run_dir: Path) -> str:
    """A wandb run id fixed by the run directory, so that a resumed run continues its wandb run."""
    return hashlib.blake2b(str(run_dir.resolve()).encode(), digest_size=8).hexdigest()


class Trackers:
    """The trackers a run asked for, opened in its run directory; `log` sends scalars to each of them."""

    def __init__(self, config: LogConfig, run_dir: Path, *, resume_step: int = 0,
                 settings: dict[str, Any] | None = None) -> None:
        check_trackers(config)
        self._writer: Any = None
        self._wandb: Any = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops what an earlier session logged past the checkpoint it resumes from
            self._writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        if config.wandb:
            import wandb

            self._wandb = wandb.init(project=config.wandb_project, name=config.wandb_name or run_dir.name,
                                     mode=config.wandb_mode, dir=str(run_dir), config=settings,
                                     id=_wandb_id(run_dir), resume="allow")

    @property
    def active(self) -> bool:
        """Whether any tracker is open."""
        return self._writer is not None or self._wandb is not None

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record `values` (names like "train/loss") at global step `step`."""
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
        if self._wandb is not None and values:
            self._wandb.log(dict(values), step=step)

    def close(self) -> None:
        """Flush and close every tracker."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
