"""Which images form each batch: a seeded permutation, or batches with a share of labelled images.

`epoch_batches` is the plain epoch. With a small share of labels a random batch holds few
labelled images (6 of 64 at 10 %), so the label pairs of a step come from a handful of images.
With `relational.labelled_batch_share` s, `labelled_floor_batches` fills F = round(s M) slots of
every batch from the labelled set, the usual semi-supervised practice of a labelled batch beside
an unlabelled one (the paper is silent on batch composition). The other slots are filled as a
random batch would be (rest "all") or with unlabelled images only (rest "unlabelled"). An epoch
keeps the plain epoch's N // M steps, so step budgets and schedules do not change. Images are
drawn from seeded permutations of the labelled and of the unlabelled set laid end to end, and the
rows of every batch are shuffled, so labelled images sit at random positions (the negative walk
pairs each anchor with its neighbours in the batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

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


@dataclass(frozen=True)
class LabelledBatches:
    """How batches are composed while labels are few: `share` of each batch from the labelled set.

    `rest` says where the other slots come from: "all" draws them like a random batch (labelled
    images with the training set's labelled share f, unlabelled ones otherwise), so a batch holds
    about (share + (1 - share) f) M labelled images; "unlabelled" fills them with unlabelled images only.
    """

    share: float
    rest: Literal["all", "unlabelled"] = "all"


def labelled_floor(labels: torch.Tensor, batch_size: int, plan: LabelledBatches | None) -> int:
    """Labelled slots per composed batch, F = round(share * batch_size), or 0 where batches stay random.

    Batches stay random without a plan or with share 0, when every image is labelled, and with
    rest "unlabelled" when the labelled share already reaches F / batch_size. Raises ConfigError
    when a share is asked for but no training image is labelled.
    """
    if plan is None:
        return 0
    if not 0.0 <= plan.share <= 1.0:
        raise ConfigError(f"relational.labelled_batch_share must lie in [0, 1]; got {plan.share}")
    floor = round(plan.share * batch_size)
    if floor == 0:
        return 0
    labelled = int((labels >= 0).sum())
    if labelled == 0:
        raise ConfigError("relational.labelled_batch_share needs labelled training images; set "
                          "relational.labelled_fraction above 0")
    if labelled == labels.numel():
        return 0
    if plan.rest == "unlabelled" and labelled * batch_size >= floor * labels.numel():
        return 0
    return floor


def batch_indices(labels: torch.Tensor, batch_size: int, floor: int, seed: int, epoch: int, rank: int = 0,
                  world_size: int = 1, rest: Literal["all", "unlabelled"] = "all") -> torch.Tensor:
    """This rank's (steps, batch_size / world_size) indices of `epoch`: composed when `floor` > 0, else random."""
    if floor:
        return labelled_floor_batches(labels, batch_size, floor, seed, epoch, rank, world_size, rest)
    return epoch_batches(labels.numel(), batch_size, seed, epoch, rank, world_size)


def _draws(pool: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """`count` members of `pool` from seeded permutations of it laid end to end."""
    if count == 0:
        return pool[:0]
    reps = math.ceil(count / pool.numel())
    return torch.cat([pool[torch.randperm(pool.numel(), generator=gen)] for _ in range(reps)])[:count]


def labelled_floor_batches(labels: torch.Tensor, batch_size: int, floor: int, seed: int, epoch: int,
                           rank: int = 0, world_size: int = 1,
                           rest: Literal["all", "unlabelled"] = "all") -> torch.Tensor:
    """This rank's (steps, batch_size / world_size) indices of `epoch`, at least `floor` labelled per global batch.

    Labels are -1 for unlabelled images. With rest "all" each of the other slots is labelled with
    the training set's labelled share (a seeded binomial count per batch); the labelled slots are
    filled from the labelled permutations and the others from the unlabelled ones, so an image
    appears at most once in a batch unless a permutation ends inside it. Seeded by (seed, epoch)
    alone, so every rank draws the same global batches and takes its own block of each.
    """
    labels = labels.cpu()
    labelled = labels >= 0
    steps = labels.numel() // batch_size
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n_labelled = torch.full((steps,), floor, dtype=torch.long)
    if rest == "all":
        share = labelled.float().mean()
        n_labelled += torch.binomial(torch.full((steps,), float(batch_size - floor)), share.expand(steps),
                                     generator=gen).long()
    slots = torch.arange(batch_size)[None, :] < n_labelled[:, None]  # (steps, M): the labelled slots first
    batches = torch.empty(steps, batch_size, dtype=torch.long)
    batches[slots] = _draws(labelled.nonzero().flatten(), int(n_labelled.sum()), gen)
    unlabelled_pool = (~labelled).nonzero().flatten()
    n_unlabelled = int((~slots).sum())
    if n_unlabelled and unlabelled_pool.numel() == 0:
        raise ConfigError("relational.labelled_batch_share: no unlabelled image to fill the rest of the batch")
    batches[~slots] = _draws(unlabelled_pool, n_unlabelled, gen)
    order = torch.argsort(torch.rand(steps, batch_size, generator=gen), dim=1)
    batches = batches.gather(1, order)
    return batches.view(steps, world_size, batch_size // world_size)[:, rank]
