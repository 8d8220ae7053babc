"""Per-step CSV log that syncs with the device only every few steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TextIO

import torch

from relssl.distributed import all_reduce_mean
from relssl.errors import NonFiniteLossError

__all__ = ["NonFiniteLossError", "StepLog"]


class StepLog:
    """Buffers per-step metric tensors and writes them to `train_log.csv` in one host sync.

    Reading a GPU scalar every step would stall the pipeline, so values stay on the device
    until `flush`, which also checks them for NaN/inf. With several processes every rank flushes
    at the same steps: the values written are the mean over ranks (one all-reduce per flush), so
    a NaN on any rank stops all of them, and only the rank given a `path` (rank 0) writes.
    """

    def __init__(self, path: Path | None, columns: list[str], append: bool = False) -> None:
        self.path = path
        self.columns = columns
        self._pending: list[tuple[int, int, float, dict[str, torch.Tensor]]] = []
        self.last: dict[str, float] = {}
        self._fh: TextIO | None = None
        if path is None:
            return
        fresh = not (append and path.exists())
        self._fh = path.open("w" if fresh else "a", newline="")
        self._writer = csv.writer(self._fh)
        if fresh:
            self._writer.writerow(["step", "epoch", "elapsed_s", *columns])
            self._fh.flush()

    def add(self, step: int, epoch: int, elapsed: float, metrics: dict[str, torch.Tensor]) -> None:
        """Queue one step's detached metrics."""
        self._pending.append((step, epoch, elapsed, {k: v.detach() for k, v in metrics.items()}))

    def flush(self) -> dict[str, float]:
        """Write queued rows; raise NonFiniteLossError if any loss is NaN/inf."""
        if not self._pending:
            return self.last
        stacked = torch.stack([torch.stack([m[c].float() for c in self.columns]) for *_, m in self._pending])
        values = all_reduce_mean(stacked).cpu().tolist()  # the one host sync for the whole buffer
        rows = self._pending
        self._pending = []
        for (step, epoch, elapsed, _), vals in zip(rows, values):
            if not all(math.isfinite(v) for v in vals):
                bad = dict(zip(self.columns, vals))
                raise NonFiniteLossError(f"non-finite value at step {step} (epoch {epoch}): {bad}")
            if self._fh is not None:
                self._writer.writerow([step, epoch, f"{elapsed:.3f}", *(f"{v:.6g}" for v in vals)])
        if self._fh is not None:
            self._fh.flush()
        self.last = dict(zip(self.columns, values[-1]))
        return self.last

    def close(self) -> None:
        """Close the file (pending rows are dropped: call flush first if they are wanted)."""
        if self._fh is not None:
            self._fh.close()
