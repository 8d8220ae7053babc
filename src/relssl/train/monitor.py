"""The kNN monitor: weighted-kNN top-1 of the backbone being trained, measured every few epochs.

The labelled evaluation splits of the run (the ones its end-of-run evaluation reads) are read
once: the train split is the kNN's memory bank, the test split is scored. Each measurement
recomputes the features of both with the current backbone in eval mode, without gradients, and
leaves the global random state as it was, so a monitored run trains exactly like an unmonitored one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from relssl.augment import to_normalized
from relssl.data.listing import Listing
from relssl.data.stream import stream_features
from relssl.evaluate import EvalData, StreamedEvalData
from relssl.evaluate.features import extract_features
from relssl.evaluate.knn import knn_accuracy
from relssl.evaluate.protocols import readable_rows

__all__ = ["KnnMonitor", "MONITOR_COLUMNS", "monitor_csv", "monitor_due"]

#: The columns of RUN/monitor.csv (and the keys of each entry of metrics.json's "monitor").
MONITOR_COLUMNS = ("epoch", "step", "knn_top1")


def monitor_due(epoch: int, every: int, last: bool) -> bool:
    """Whether the monitor measures after `epoch` completed epochs: every `every` epochs and at the end."""
    return every > 0 and (last or epoch % every == 0)


def monitor_csv(rows: list[dict[str, float]]) -> str:
    """The monitor history as CSV text with the columns `MONITOR_COLUMNS`."""
    lines = [",".join(MONITOR_COLUMNS)]
    lines += [f"{int(r['epoch'])},{int(r['step'])},{r['knn_top1']:.4f}" for r in rows]
    return "\n".join(lines) + "\n"


def _rows(n: int, cap: int | None, generator: np.random.Generator) -> np.ndarray:
    """All of `n` rows, or a seeded random `cap` of them in their original order."""
    if cap is None or cap >= n:
        return np.arange(n)
    return np.sort(generator.choice(n, size=cap, replace=False))


@dataclass(frozen=True)
class _Split:
    """One split as the monitor keeps it: uint8 images in memory, or a sub-listing streamed each time."""

    labels: torch.Tensor
    images: np.ndarray | None = None
    listing: Listing | None = None


class KnnMonitor:
    """Weighted kNN (Wu et al. 2018: k = 20, tau = 0.07) from the eval train split to the eval test split.

    `samples` caps each split at that many images (a seeded random subset, fixed for the whole run),
    which makes a measurement cheap on a large dataset. A memory bank smaller than k votes with all its images.
    """

    def __init__(self, data: EvalData | StreamedEvalData, *, mean: tuple[float, ...], std: tuple[float, ...],
                 size: int | None, device: torch.device, samples: int | None = None, seed: int = 0,
                 batch_size: int = 512, k: int = 20, temperature: float = 0.07) -> None:
        self.data, self.device, self.batch_size = data, device, batch_size
        self.k, self.temperature = k, temperature
        self.num_classes = data.num_classes
        self._normalize_arrays = functools.partial(to_normalized, mean=mean, std=std, size=size)
        self._normalize_stream = functools.partial(to_normalized, mean=mean, std=std)
        generator = np.random.default_rng(seed)
        self.bank, self.query = (self._keep(name, samples, generator) for name in ("train", "test"))

    def _keep(self, name: str, samples: int | None, generator: np.random.Generator) -> _Split:
        """Read the chosen rows of one split once: their images (decoded data) or their files (streamed)."""
        rows = _rows(self.data.size(name), samples, generator)
        labels = torch.from_numpy(self.data.labels(name)[rows])
        if isinstance(self.data, EvalData):  # a whole split stays the (memory-mapped) decode cache; a sample is copied
            images = (self.data.train if name == "train" else self.data.test).images
            return _Split(labels, images=images if len(rows) == len(images) else np.ascontiguousarray(images[rows]))
        listing = self.data.train if name == "train" else self.data.test
        return _Split(labels, listing=Listing(listing.split, [listing.files[i] for i in rows],
                                              np.asarray(listing.labels)[rows], listing.classes))

    @property
    def sizes(self) -> tuple[int, int]:
        """Images in the memory bank and in the scored split."""
        return len(self.bank.labels), len(self.query.labels)

    def _features(self, backbone: nn.Module, split: _Split) -> torch.Tensor:
        if split.images is not None:
            return extract_features(backbone, split.images, normalize=self._normalize_arrays,
                                    batch_size=self.batch_size, device=self.device)
        assert split.listing is not None and isinstance(self.data, StreamedEvalData)
        return stream_features(backbone, split.listing, size=self.data.crop, resize=self.data.resize,
                               normalize=self._normalize_stream, batch_size=self.batch_size, device=self.device,
                               workers=self.data.workers)

    def measure(self, backbone: nn.Module) -> float:
        """kNN top-1 (percent) of `backbone` as it is now; its train/eval modes and the RNG state are kept."""
        cuda = self.device.type == "cuda"
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            bank_x, bank_y, _ = readable_rows(self._features(backbone, self.bank), self.bank.labels.numpy())
            query_x, query_y, _ = readable_rows(self._features(backbone, self.query), self.query.labels.numpy())
        return knn_accuracy(bank_x.to(self.device), bank_y, query_x.to(self.device), query_y,
                            k=min(self.k, len(bank_y)), temperature=self.temperature, num_classes=self.num_classes)
