"""Which images form each batch: a seeded permutation, or a fixed share of labelled images.

`epoch_batches` is the plain epoch. With a small share of labels a random batch holds few labelled images (6 of 64 at 10 %), so the
label pairs of a step come from a handful of images. With `relational.labelled_batch_share` s,
`labelled_floor_batches` composes every batch of F = round(s M) labelled images and M - F
unlabelled ones whenever the training set's labelled share is below F / M, the usual practice of
semi-supervised training (a labelled and an unlabelled batch per step); the paper is silent on
batch composition. An epoch keeps the plain epoch's number of steps, N // M, so step budgets and
schedules do not change. The labelled images are drawn from seeded permutations of the labelled
set laid end to end (each image at most once per permutation), the unlabelled ones likewise from
permutations of the unlabelled set, and the rows of every batch are shuffled, so labelled images
sit at random positions (the negative walk pairs each anchor with its neighbours in the batch).
"""

from __future__ import annotations

import math

import torch

from relssl.errors import ConfigError


def epoch_batches(num_images: int, batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's (steps, batch_size / world_size) dataset indices of `epoch`: a seeded permutation.

    The permutation does not depend on the number of processes: rank r takes the r-th block of
    every global batch (the last partial batch is dropped).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    steps = num_images // batch_size
    perm = torch.randperm(num_images, generator=gen)[: steps * batch_size]
    return perm.view(steps, world_size, batch_size // world_size)[:, rank]


def labelled_floor(labels: torch.Tensor, batch_size: int, share: float) -> int:
    """Labelled images per composed batch, round(share * batch_size), or 0 where batches stay random.

    Batches stay random when `share` is 0 or the training set's labelled share already reaches
    F / batch_size. Raises ConfigError when a share is asked for but no training image is labelled.
    """
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"relational.labelled_batch_share must lie in [0, 1]; got {share}")
    floor = round(share * batch_size)
    if floor == 0:
        return 0
    labelled = int((labels >= 0).sum())
    if labelled == 0:
        raise ConfigError("relational.labelled_batch_share needs labelled training images; set "
                          "relational.labelled_fraction above 0")
    return floor if labelled * batch_size < floor * labels.numel() else 0


def batch_indices(labels: torch.Tensor, batch_size: int, floor: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1) -> torch.Tensor:
    """This rank's (steps, batch_size / world_size) indices of `epoch`: composed when `floor` > 0, else random."""
    if floor:
        return labelled_floor_batches(labels, batch_size, floor, seed, epoch, rank, world_size)
    return epoch_batches(labels.numel(), batch_size, seed, epoch, rank, world_size)


def _draws(pool: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` members of `pool` from seeded permutations of it laid end to end."""
    if count == 0:
        return pool[:0]
    reps = math.ceil(count / pool.numel())
    return torch.cat([pool[torch.randperm(pool.numel(), generator=gen)] for _ in range(reps)])[:count]


def labelled_floor_batches(labels: torch.Tensor, batch_size: int, floor: int, seed: int, epoch: int,
                           rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's (steps, batch_size / world_size) indices of `epoch`, `floor` labelled images per global batch.

    Labels are -1 for unlabelled images. Seeded by (seed, epoch) alone, so every rank draws the
    same global batches and takes its own block of each, as the plain `epoch_batches` does.
    """
    labels = labels.cpu()
    labelled = labels >= 0
    steps = labels.numel() // batch_size
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    lab = _draws(labelled.nonzero().flatten(), steps * floor, gen).view(steps, floor)
    unlabelled_pool = (~labelled).nonzero().flatten()
    if unlabelled_pool.numel() == 0 and floor < batch_size:
        raise ConfigError("relational.labelled_batch_share: no unlabelled image to fill the rest of the batch")
    unl = _draws(unlabelled_pool, steps * (batch_size - floor), gen).view(steps, batch_size - floor)
    batches = torch.cat((lab, unl), dim=1)
    order = torch.argsort(torch.rand(steps, batch_size, generator=gen), dim=1)
    batches = batches.gather(1, order)
    return batches.view(steps, world_size, batch_size // world_size)[:, rank]
