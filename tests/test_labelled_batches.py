"""Batches with a fixed share of labelled images (relational.labelled_batch_share) for few-label runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from relssl.augment import AugmentConfig
from relssl.data.batch_indices import epoch_batches, labelled_floor, labelled_floor_batches
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


def test_every_batch_holds_the_floor_of_labelled_images_at_random_positions():
    labels = partly_labelled()
    batches = labelled_floor_batches(labels, 32, 8, seed=0, epoch=0)
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


def test_composition_is_seeded_per_epoch_and_ranks_take_blocks_of_the_same_global_batch():
    labels = partly_labelled()
    first = labelled_floor_batches(labels, 32, 8, seed=3, epoch=1)
    assert torch.equal(first, labelled_floor_batches(labels, 32, 8, seed=3, epoch=1))
    assert not torch.equal(first, labelled_floor_batches(labels, 32, 8, seed=3, epoch=2))
    assert not torch.equal(first, labelled_floor_batches(labels, 32, 8, seed=4, epoch=1))
    ranks = [labelled_floor_batches(labels, 32, 8, seed=3, epoch=1, rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat(ranks, dim=1), first)


def test_stream_composes_only_below_the_floor_share_and_is_plain_otherwise():
    images = np.zeros((400, 4, 4, 3), dtype=np.uint8)
    few = partly_labelled(labelled=40).numpy()  # 10 % < 8 / 32
    stream = BatchStream(images, few, 32, seed=1, labelled_share=0.25)
    assert stream.labelled_floor == 8
    assert (torch.from_numpy(few)[stream.epoch_indices(0)] >= 0).sum(dim=1).eq(8).all()
    many = partly_labelled(labelled=200).numpy()  # 50 % >= 8 / 32: a random batch already holds 16 on average
    plain = BatchStream(images, many, 32, seed=1, labelled_share=0.25)
    assert plain.labelled_floor == 0
    assert torch.equal(plain.epoch_indices(0), epoch_batches(400, 32, 1, 0))
    assert torch.equal(BatchStream(images, few, 32, seed=1).epoch_indices(0), epoch_batches(400, 32, 1, 0))


def test_floor_errors_name_the_setting():
    images = np.zeros((64, 4, 4, 3), dtype=np.uint8)
    with pytest.raises(ConfigError, match="labelled_batch_share must lie in"):
        labelled_floor(partly_labelled(64, 8), 32, 1.5)
    with pytest.raises(ConfigError, match="needs labelled training images"):
        BatchStream(images, np.full(64, -1), 32, labelled_share=0.25)
    with pytest.raises(ConfigError, match="labelled_batch_share"):
        build_config({}, {"relational.labelled_batch_share": 1.2})
    assert labelled_floor(partly_labelled(64, 8), 64, 0.75) == 48 and labelled_floor(partly_labelled(64, 8), 64, 0.0) == 0
    assert labelled_floor(partly_labelled(64, 60), 64, 0.75) == 0  # 94 % labelled: batches stay random


def test_the_share_is_used_only_when_labels_are():
    cfg = build_config({}, {"relational.k": 2})
    assert cfg.relational.labelled_batch_share == 0.75  # the default ...
    method = build_method(cfg, build_backbone(cfg), num_images=40, num_classes=4)
    assert method.labelled_batch_share == 0.0  # ... is moot without labels: unlabelled folders train as before
    semi = build_config({}, {"relational.k": 2, "relational.labelled_fraction": 0.1})
    assert build_method(semi, build_backbone(semi), num_images=40, num_classes=4).labelled_batch_share == 0.75
    images = np.zeros((64, 4, 4, 3), dtype=np.uint8)
    assert BatchStream(images, np.full(64, -1), 32, labelled_share=method.labelled_batch_share).labelled_floor == 0


def test_trainer_feeds_the_method_batches_with_the_floor(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(200, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 50)
    cfg = build_config({}, {"relational.k": 2, "relational.labelled_fraction": 0.1,
                            "relational.labelled_batch_share": 0.375, "train.batch_size": 16, "train.max_steps": 3,
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
    loader = StreamLoader(listing, CropSettings(size=8, views=2), 8, seed=2, workers=0, labelled_share=0.5)
    arrays = BatchStream(np.zeros((40, 8, 8, 3), dtype=np.uint8), labels, 8, seed=2, labelled_share=0.5)
    assert loader.labelled_floor == arrays.labelled_floor == 4
    assert torch.equal(loader.epoch_indices(1), arrays.epoch_indices(1))
    batches = list(loader.iterate(1))
    assert len(batches) == 5 and all((batch_labels >= 0).sum() == 4 for _, batch_labels, _ in batches)
