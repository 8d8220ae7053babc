"""Batches with a share of labelled slots (relational.labelled_batch_share) for few-label runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relssl.augment import AugmentConfig
from relssl.data.batch_indices import LabelledBatches, epoch_batches, labelled_floor, labelled_floor_batches
from relssl.errors import ConfigError
from relssl.train import build_method
from relssl.train.batches import BatchStream
from relssl.train.config import build_config
from relssl.train.run import build_backbone
from relssl.train.trainer import Trainer


def partly_labelled(n: int = 400, labelled: int = 40, classes: int = 4, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    labels = np.full(n, -1)
    chosen = rng.choice(n, labelled, replace=False)
    labels[chosen] = np.arange(labelled) % classes
    return torch.from_numpy(labels)


def test_unlabelled_rest_holds_exactly_the_floor_of_labelled_images_at_random_positions():
    labels = partly_labelled()
    batches = labelled_floor_batches(labels, 32, 8, seed=0, epoch=0, rest="unlabelled")
    assert batches.shape == (400 // 32, 32)  # the plain epoch's number of steps
    is_labelled = labels[batches] >= 0
    assert (is_labelled.sum(dim=1) == 8).all()
    # labelled images are not kept in a block: over the epoch they occupy many different positions
    assert is_labelled.any(dim=0).sum() > 24
    # 12 steps x 8 = 96 draws from 40 labelled images: whole permutations laid end to end
    counts = torch.bincount(batches[is_labelled], minlength=400)[labels >= 0]
    assert counts.sum() == 96 and set(counts.tolist()) <= {2, 3}
    # 12 x 24 = 288 unlabelled draws from 360: none repeats within the epoch
    unlabelled = batches[~is_labelled]
    assert unlabelled.unique().numel() == unlabelled.numel() == 288


def test_rest_all_adds_labelled_images_at_the_data_share():
    n, floor, m = 20_000, 16, 64
    for share in (0.1, 0.5):
        labels = partly_labelled(n, int(share * n), classes=10)
        batches = labelled_floor_batches(labels, m, floor, seed=0, epoch=0, rest="all")
        per_batch = (labels[batches] >= 0).sum(dim=1).double()
        assert per_batch.min() >= floor
        # extra labelled slots ~ Binomial(M - F, share): the mean within 4 standard errors of the expectation
        expected, sd = floor + (m - floor) * share, ((m - floor) * share * (1 - share)) ** 0.5
        assert abs(per_batch.mean().item() - expected) < 4 * sd / len(per_batch) ** 0.5
        assert per_batch.var().item() == pytest.approx(sd**2, rel=0.25)
        # no image twice in a batch while the permutations are long: 312 steps x ~21 labelled < 2,000
        if share == 0.5:
            assert all(row.unique().numel() == m for row in batches)
    labels = partly_labelled(400, 40)
    more = (labels[labelled_floor_batches(labels, 32, 8, seed=0, epoch=0, rest="all")] >= 0).sum(dim=1)
    assert (more >= 8).all() and more.sum() > 12 * 8  # the random slots add labelled images too


@pytest.mark.parametrize("rest", ["all", "unlabelled"])
def test_composition_is_seeded_per_epoch_and_ranks_take_blocks_of_the_same_global_batch(rest):
    labels = partly_labelled()
    first = labelled_floor_batches(labels, 32, 8, seed=3, epoch=1, rest=rest)
    assert torch.equal(first, labelled_floor_batches(labels, 32, 8, seed=3, epoch=1, rest=rest))
    assert not torch.equal(first, labelled_floor_batches(labels, 32, 8, seed=3, epoch=2, rest=rest))
    assert not torch.equal(first, labelled_floor_batches(labels, 32, 8, seed=4, epoch=1, rest=rest))
    ranks = [labelled_floor_batches(labels, 32, 8, seed=3, epoch=1, rank=r, world_size=4, rest=rest)
             for r in range(4)]
    assert torch.equal(torch.cat(ranks, dim=1), first)


def test_stream_composes_while_labels_are_few_and_is_plain_otherwise():
    images = np.zeros((400, 4, 4, 3), dtype=np.uint8)
    few = partly_labelled(labelled=40).numpy()  # 10 % < 8 / 32
    stream = BatchStream(images, few, 32, seed=1, labelled_batches=LabelledBatches(0.25, "unlabelled"))
    assert stream.labelled_floor == 8
    assert (torch.from_numpy(few)[stream.epoch_indices(0)] >= 0).sum(dim=1).eq(8).all()
    many = partly_labelled(labelled=200).numpy()  # 50 % >= 8 / 32: a random batch already holds 16 on average
    plain = BatchStream(images, many, 32, seed=1, labelled_batches=LabelledBatches(0.25, "unlabelled"))
    assert plain.labelled_floor == 0
    assert torch.equal(plain.epoch_indices(0), epoch_batches(400, 32, 1, 0))
    # rest "all" composes at any share below 100 %
    assert BatchStream(images, many, 32, seed=1, labelled_batches=LabelledBatches(0.25)).labelled_floor == 8
    every = np.arange(400) % 4
    assert BatchStream(images, every, 32, seed=1, labelled_batches=LabelledBatches(0.25)).labelled_floor == 0
    assert torch.equal(BatchStream(images, few, 32, seed=1).epoch_indices(0), epoch_batches(400, 32, 1, 0))


def test_floor_errors_name_the_setting():
    images = np.zeros((64, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(ConfigError, match="labelled_batch_share must lie in"):
        labelled_floor(partly_labelled(64, 8), 32, LabelledBatches(1.5))
    with pytest.raises(ConfigError, match="needs labelled training images"):
        BatchStream(images, np.full(64, -1), 32, labelled_batches=LabelledBatches(0.25))
    with pytest.raises(ConfigError, match="labelled_batch_share"):
        build_config({}, {"relational.labelled_batch_share": 1.2})
    with pytest.raises(ConfigError, match="labelled_batch_rest"):
        build_config({}, {"relational.labelled_batch_rest": "labelled"})
    assert labelled_floor(partly_labelled(64, 8), 64, LabelledBatches(0.75)) == 48
    assert labelled_floor(partly_labelled(64, 8), 64, LabelledBatches(0.0)) == 0
    assert labelled_floor(partly_labelled(64, 8), 64, None) == 0
    # 94 % labelled: random batches already hold about 60, so "unlabelled" leaves them alone
    assert labelled_floor(partly_labelled(64, 60), 64, LabelledBatches(0.75, "unlabelled")) == 0


def test_the_composition_is_used_only_when_labels_are():
    cfg = build_config({}, {"relational.k": 2})
    assert (cfg.relational.labelled_batch_share, cfg.relational.labelled_batch_rest) == (0.75, "all")  # defaults ...
    method = build_method(cfg, build_backbone(cfg), num_images=40, num_classes=4)
    assert method.labelled_batches is None  # ... moot without labels: unlabelled folders train as before
    semi = build_config({}, {"relational.k": 2, "relational.labelled_fraction": 0.1})
    assert build_method(semi, build_backbone(semi), num_images=40, num_classes=4).labelled_batches == \
        LabelledBatches(0.75, "all")
    off = build_config({}, {"relational.k": 2, "relational.labelled_fraction": 0.1,
                            "relational.labelled_batch_share": 0})
    assert build_method(off, build_backbone(off), num_images=40, num_classes=4).labelled_batches is None


def test_trainer_feeds_the_method_batches_with_the_floor(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 50)
    cfg = build_config({}, {"relational.k": 2, "relational.labelled_fraction": 0.1,
                            "relational.labelled_batch_share": 0.375, "relational.labelled_batch_rest": "unlabelled",
                            "train.batch_size": 16, "train.max_steps": 3,
                            "train.progress": False, "train.device": "cpu"})
    method = build_method(cfg, build_backbone(cfg), num_images=200, num_classes=4)
    seen = []
    step = method.training_step
    method.training_step = lambda views, batch_labels, idx: (seen.append(batch_labels.clone()), step(views, batch_labels, idx))[1]
    trainer = Trainer(cfg, method, images, method.training_labels(labels, cfg.seed), AugmentConfig(),
                      torch.device("cpu"), tmp_path)
    trainer.fit()
    assert len(seen) == 3 and all((batch >= 0).sum() == 6 for batch in seen)


def test_streaming_loader_draws_the_same_composed_batches(tmp_path):
    from PIL import Image

    from relssl.data.listing import Listing
    from relssl.data.stream import CropSettings, StreamLoader

    files = []
    for n in range(40):
        path = tmp_path / f"{n:02d}.png"
        Image.new("RGB", (8, 8), (n, 0, 0)).save(path)
        files.append(str(path))
    labels = partly_labelled(40, 4, classes=2).numpy()
    listing = Listing("train", files, labels, ("a", "b"))
    plan = LabelledBatches(0.5, "unlabelled")
    loader = StreamLoader(listing, CropSettings(size=8, views=2), 8, seed=2, workers=0, labelled_batches=plan)
    arrays = BatchStream(np.zeros((40, 8, 8, 3), dtype=np.uint8), labels, 8, seed=2, labelled_batches=plan)
    assert loader.labelled_floor == arrays.labelled_floor == 4
    assert torch.equal(loader.epoch_indices(1), arrays.epoch_indices(1))
    batches = list(loader.iterate(1))
    assert len(batches) == 5 and all((batch_labels >= 0).sum() == 4 for _, batch_labels, _ in batches)


def test_unlabelled_rest_draws_the_batches_the_published_runs_used():
    """docs/RESULTS.md's rest-unlabelled rows came from this construction: a labelled block, an unlabelled block,
    then a seeded shuffle of each row; today's slot-filling code must draw exactly the same batches."""
    from relssl.data.batch_indices import _draws

    labels = partly_labelled(2_000, 200, classes=10)
    m, floor, seed, epoch = 64, 48, 1, 3
    steps = labels.numel() // m
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    lab = _draws((labels >= 0).nonzero().flatten(), steps * floor, gen).view(steps, floor)
    unl = _draws((labels < 0).nonzero().flatten(), steps * (m - floor), gen).view(steps, m - floor)
    reference = torch.cat((lab, unl), dim=1).gather(1, torch.argsort(torch.rand(steps, m, generator=gen), dim=1))
    assert torch.equal(labelled_floor_batches(labels, m, floor, seed, epoch, rest="unlabelled"), reference)
