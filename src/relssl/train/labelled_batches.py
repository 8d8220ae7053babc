"""Batches that hold a fixed number of labelled images, for semi-supervised runs with few labels.

With a small share of labels a random batch holds few labelled images (6 of 64 at 10 %), so the
label pairs of a step come from a handful of images. `labelled_floor_batches` composes every batch
of `floor` labelled images and M - floor unlabelled ones instead, the usual practice of
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


def floor_applies(labels: torch.Tensor, batch_size: int, floor: int) -> bool:
    """Whether batches are composed: a floor is set and the labelled share is below floor / batch_size.

    Raises ConfigError when a floor is set but it cannot be met: no labelled image, or a floor above the batch.
    """
    if floor <= 0:
        return False
    if floor > batch_size:
        raise ConfigError(f"relational.labelled_per_batch={floor} exceeds the batch of {batch_size} images")
    labelled = int((labels >= 0).sum())
    if labelled == 0:
        raise ConfigError("relational.labelled_per_batch needs labelled training images; set "
                          "relational.labelled_fraction above 0")
    return labelled * batch_size < floor * labels.numel()


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
        raise ConfigError("relational.labelled_per_batch: no unlabelled image to fill the rest of the batch")
    unl = _draws(unlabelled_pool, steps * (batch_size - floor), gen).view(steps, batch_size - floor)
    batches = torch.cat((lab, unl), dim=1)
    order = torch.argsort(torch.rand(steps, batch_size, generator=gen), dim=1)
    batches = batches.gather(1, order)
    return batches.view(steps, world_size, batch_size // world_size)[:, rank]
