"""Per-step CSV log that syncs with the device only every few steps."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TextIO

import torch

from relssl.distributed import all_reduce_mean
from relssl.errors import NonFiniteLossError
from relssl.train.checkpoint import write_error, write_text

__all__ = ["NonFiniteLossError", "StepLog", "trim_log"]


def trim_log(path: Path, last_step: int) -> None:
    """Keep the header and the rows of steps up to `last_step` (a resumed run writes the later ones again).

    A kill after a log flush but before the next checkpoint leaves rows past the checkpoint's
    step, and a kill mid-write a cut last line; both go. The file is rewritten atomically.
    """
    with path.open(newline="") as fh:  # keep the csv module's \r\n line ends as written
        lines = fh.read().splitlines(keepends=True)
    kept = lines[:1]
    for line in lines[1:]:
        step = line.split(",", 1)[0]
        if line.endswith("\n") and step.isdigit() and int(step) <= last_step:
            kept.append(line)
    if len(kept) < len(lines):
        write_text(path, "".join(kept))


class StepLog:
    """Buffers per-step metric tensors and writes them to `train_log.csv` in one host sync.

    Reading a GPU scalar every step would stall the pipeline, so values stay on the device
    until `flush`, which also checks them for NaN/inf. With several processes every rank flushes
    at the same steps: the values written are the mean over ranks (one all-reduce per flush), so
    a NaN on any rank stops all of them, and only the rank given a `path` (rank 0) writes.
    """

    def __init__(self, path: Path | None, columns: list[str], resume_step: int = 0) -> None:
        """Start `path` afresh, or with `resume_step` > 0 keep its rows up to that step and append."""
        self.path = path
        self.columns = columns
        self._pending: list[tuple[int, int, float, dict[str, torch.Tensor]]] = []
        self.last: dict[str, float] = {}
        self._fh: TextIO | None = None
        if path is None:
            return
        fresh = not (resume_step > 0 and path.exists() and path.stat().st_size > 0)
        try:
            if not fresh:
                trim_log(path, resume_step)
            self._fh = path.open("w" if fresh else "a", newline="")
            self._writer = csv.writer(self._fh)
            if fresh:
                self._writer.writerow(["step", "epoch", "elapsed_s", *columns])
                self._fh.flush()
        except OSError as err:
            raise write_error(path, err) from None

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
            self._write_row([step, epoch, f"{elapsed:.3f}", *(f"{v:.6g}" for v in vals)])
        self._write_row(None)
        self.last = dict(zip(self.columns, values[-1]))
        return self.last

    def _write_row(self, row: list[object] | None) -> None:
        """Write one row (None: flush the file); a refused write (a full disk) is a one-line CheckpointError."""
        if self._fh is None or self.path is None:
            return
        try:
            if row is None:
                self._fh.flush()
            else:
                self._writer.writerow(row)
        except OSError as err:
            raise write_error(self.path, err) from None

    def close(self) -> None:
        """Close the file (pending rows are dropped: call flush first if they are wanted)."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as err:  # buffered rows that a full disk refused
                raise write_error(self.path or Path("train_log.csv"), err) from None
