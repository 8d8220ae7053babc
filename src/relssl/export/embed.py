"""`embed_folder`: one feature row per image of a folder, batched on the device, resumable, tolerant of bad files.

Images are found recursively (`relssl.data.imagefolder.list_images`: sorted, hidden names
skipped, each real file once) and preprocessed exactly as the backbone's evaluation does
(`BackboneInfo.preprocess`). Decoding runs in a thread pool one batch ahead of the device.
An image that cannot be read is skipped and listed in unreadable.txt. A rerun with the same
checkpoint, folder and options continues where an interrupted one stopped (`EmbedState`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from relssl.data.imagefolder import IMAGE_EXTENSIONS, list_images
from relssl.data.workers import default_workers
from relssl.errors import ConfigError, DataError, RelsslWarning
from relssl.export.embed_state import EmbedState, files_digest, weights_digest
from relssl.export.loading import load_backbone_info
from relssl.progress import Progress
from relssl.train.backbone_info import BackboneInfo
from relssl.train.preprocess import Preprocess

__all__ = ["EmbedResult", "embed_folder", "list_folder"]


@dataclass(frozen=True)
class EmbedResult:
    """What `embed_folder` left in `output`, and whether it had to do anything."""

    output: Path
    images: int  # image files found
    embedded: int  # rows of embeddings.npy
    unreadable: list[str]  # paths relative to the folder
    resumed_at: int  # images already done by an earlier, interrupted call
    already_done: bool  # the output already held this result: nothing was computed


def list_folder(folder: str | Path) -> list[str]:
    """Paths relative to `folder` of every image under it, recursively, sorted; a DataError when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--images {root} is not a folder; pass the folder that holds the images")
    relative = [Path(os.path.relpath(path, root)).as_posix() for path in list_images(root)]
    if not relative:
        raise DataError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} files, any "
                        "letter case, in it and its sub-folders)")
    return relative


def embed_folder(checkpoint: str | Path, images: str | Path, output: str | Path, *, batch_size: int = 256,
                 device: str | torch.device = "cpu", normalize: bool = False, progress: bool = True,
                 restart: bool = False, workers: int | None = None) -> EmbedResult:
    """Embed every image under `images` with the backbone at `checkpoint` into `output` (see the module docstring).

    Writes output/embeddings.npy (float32, one row per readable image, L2-normalised with
    `normalize`), files.txt (their paths relative to `images`, same order), unreadable.txt and
    embed.json. `restart` discards an earlier result or unfinished attempt made from other inputs.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    root, out = Path(images), Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder to write the embeddings into")
    relative = list_folder(root)
    backbone, info = load_backbone_info(checkpoint)
    identity = {"checkpoint": weights_digest(backbone), "files": files_digest(root, relative),
                "preprocess": info.preprocess.to_dict(), "normalize": normalize, "feature_dim": info.feature_dim}
    state = EmbedState(out, identity, len(relative), info.feature_dim)
    if state.finished(restart):
        return _result(out, relative, state, 0, already_done=True)
    rows = state.open_rows()
    resumed_at = state.done
    device = torch.device(device)
    backbone.to(device).eval()
    paths = [str(root / name) for name in relative]
    with Progress(len(paths), "embed", "img", show=progress, initial=state.done) as bar:
        for start, arrays, failed in _decoded_batches(paths, info.preprocess, state.done, batch_size, workers):
            good = [i for i in range(len(arrays)) if i not in failed]
            if good:
                features = _embed_batch(backbone, info, np.stack([arrays[i] for i in good]), device, normalize)
                rows[[start + i for i in good]] = features
            rows.flush()
            state.unreadable += [start + i for i in sorted(failed)]
            state.done = start + len(arrays)
            state.save()
            bar.update(len(arrays))
    extra = {"checkpoint": str(checkpoint), "images_folder": str(root.resolve()), "normalized": normalize,
             "architecture": info.architecture, "preprocess": info.preprocess.to_dict()}
    embedded = state.finish(rows, relative, extra)
    if state.unreadable:
        warnings.warn(f"{len(state.unreadable)} of {len(relative)} images could not be read and were skipped "
                      f"(listed in {out / 'unreadable.txt'}), e.g. {relative[min(state.unreadable)]}",
                      RelsslWarning, stacklevel=2)
    if not embedded:
        raise DataError(f"none of the {len(relative)} images under {root} could be read (listed in "
                        f"{out / 'unreadable.txt'}); check that they are image files")
    return _result(out, relative, state, resumed_at, already_done=False)


@torch.no_grad()
def _embed_batch(backbone: nn.Module, info: BackboneInfo, images: np.ndarray, device: torch.device,
                 normalize: bool) -> np.ndarray:
    """float32 (B, feature_dim) features of uint8 (B, H, W, 3) images, optionally L2-normalised."""
    x = info.preprocess.batch(torch.from_numpy(images).to(device))
    features = backbone(x).flatten(1).float()
    if normalize:
        features = F.normalize(features, dim=1)
    return features.cpu().numpy()


def _read(preprocess: Preprocess, path: str) -> np.ndarray | None:
    """One preprocessed image, or None when the file cannot be read."""
    try:
        return preprocess.image(path)
    except DataError:
        return None


Batch = tuple[int, list[np.ndarray], set[int]]


def _decoded_batches(paths: Sequence[str], preprocess: Preprocess, start: int, batch_size: int,
                     workers: int | None) -> Iterator[Batch]:
    """(first index, images, positions that failed) of each batch from `start`, decoded one batch ahead."""
    blank = np.zeros((*preprocess.size, 3), dtype=np.uint8)
    firsts = range(start, len(paths), batch_size)
    with ThreadPoolExecutor(workers or default_workers()) as pool, ThreadPoolExecutor(1) as ahead:

        def decode(first: int) -> list[np.ndarray | None]:
            return list(pool.map(partial(_read, preprocess), paths[first : first + batch_size]))

        pending = ahead.submit(decode, firsts[0]) if firsts else None
        for k, first in enumerate(firsts):
            assert pending is not None
            decoded = pending.result()
            pending = ahead.submit(decode, firsts[k + 1]) if k + 1 < len(firsts) else None
            failed = {i for i, image in enumerate(decoded) if image is None}
            yield first, [blank if image is None else image for image in decoded], failed


def _result(out: Path, relative: list[str], state: EmbedState, resumed_at: int, *, already_done: bool) -> EmbedResult:
    unreadable = (out / "unreadable.txt").read_text(encoding="utf-8").splitlines() if already_done else \
        [relative[i] for i in sorted(state.unreadable)]
    embedded = len((out / "files.txt").read_text(encoding="utf-8").splitlines())
    return EmbedResult(out, len(relative), embedded, unreadable, resumed_at, already_done)
