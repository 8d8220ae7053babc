"""Each method's training step, the relational head ablations, DeepCluster's epoch hook, finetuning."""

import functools

import numpy as np
import pytest
import torch

from relssl.augment import to_normalized
from relssl.data import load_split
from relssl.errors import ConfigError
from relssl.evaluate import FinetuneConfig, finetune
from relssl.losses import relational_pairs
from relssl.methods import EpochContext
from relssl.methods.rotnet import rotate_four
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

METHODS = ["relational", "simclr", "rotnet", "deepcluster", "dim", "supervised"]


def _method(name, **overrides):
    cfg = build_config({}, {"method": name, "relational.k": 3, "deepcluster.num_clusters": 4, **overrides})
    torch.manual_seed(0)
    return build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)


@pytest.mark.parametrize("name", METHODS)
def test_training_step_gives_a_finite_loss_with_backbone_gradients(name):
    method = _method(name)
    m = 8
    views = torch.randn(method.num_views * m, 3, 16, 16)
    labels = torch.arange(m) % 5
    out = method.training_step(views, labels, torch.arange(m))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.metrics) == set(method.metric_names)
    out.loss.backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_views_per_method():
    assert [_method(n).num_views for n in METHODS] == [3, 2, 1, 1, 1, 1]


def test_rotate_four_rotations_and_labels():
    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    rotated, labels = rotate_four(img)
    assert labels.tolist() == [0, 1, 2, 3]
    assert rotated[0, 0].tolist() == [[1, 2], [3, 4]]
    assert rotated[1, 0].tolist() == [[2, 4], [1, 3]]  # 90 degrees counter-clockwise
    assert rotated[2, 0].tolist() == [[4, 3], [2, 1]]
    assert rotated[3, 0].tolist() == [[3, 1], [4, 2]]


def test_dot_head_scores_pairs_by_their_dot_product():
    method = _method("relational", **{"relational.head": "dot"})
    z = torch.randn(3 * 4, 6)
    logits, targets = method.pair_logits(z, None)
    pairs, ref_targets = relational_pairs(z, 3, "cat")
    assert torch.allclose(logits, (pairs[:, :6] * pairs[:, 6:]).sum(1))
    assert torch.equal(targets, ref_targets)


def test_encoder_head_encodes_then_dots():
    method = _method("relational", **{"relational.head": "encoder", "relational.encoder_dim": 5}).eval()
    z = torch.randn(3 * 4, 64)
    logits, _ = method.pair_logits(z, None)
    e = method.encoder(z)
    pairs, _ = relational_pairs(e, 3, "cat")
    assert torch.allclose(logits, (pairs[:, :5] * pairs[:, 5:]).sum(1), atol=1e-6)


def test_head_ablation_needs_cat():
    with pytest.raises(ConfigError, match="relational.head"):
        build_config({}, {"relational.head": "dot", "relational.aggregation": "sum"})


def test_deepcluster_epoch_hook_is_seeded_and_resets_the_classifier():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    normalize = functools.partial(to_normalized, mean=(0.5,) * 3, std=(0.25,) * 3)
    results = []
    for _ in range(2):
        method = _method("deepcluster")
        opt = torch.optim.Adam(method.parameters())
        method.classifier.weight.data.fill_(7.0)
        method.on_epoch_start(EpochContext(epoch=3, images=images, normalize=normalize, device=torch.device("cpu"),
                                           seed=1, optimizer=opt))
        assert method.classifier.weight.abs().max() < 1.0  # re-initialised
        labels = method.pseudo_labels.clone()
        assert labels.min() >= 0 and labels.max() < 4
        counts = torch.bincount(labels, minlength=4).float()
        nonempty = counts > 0
        # inverse-size weights give every non-empty cluster the same total weight
        totals = method.cluster_weights[nonempty] * counts[nonempty]
        assert torch.allclose(totals, totals[0].expand_as(totals))
        results.append((labels, method.classifier.weight.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_finetune_learns_digits_from_scratch():
    train, test = load_split("digits", "train"), load_split("digits", "test")
    torch.manual_seed(0)
    backbone = create_backbone("conv4")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = finetune(backbone, train.images, train.labels, test.images, test.labels, num_classes=10,
                      mean=(0.5,) * 3, std=(0.3,) * 3, config=FinetuneConfig(epochs=4, augment=False))
    assert result["top1"] > 80.0
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # caller's copy untouched


def test_transfer_dataset_validation():
    cfg = build_config({}, {"eval.dataset": "cifar100-20"})
    assert cfg.eval.dataset == "cifar100-20"
    with pytest.raises(ConfigError, match="eval.dataset"):
        build_config({}, {"eval.dataset": "mnist"})
    with pytest.raises(ConfigError, match="eval.root"):
        build_config({}, {"eval.dataset": "imagefolder"})


def _tiny_run(tmp_path, name, **overrides):
    from relssl.train.run import run_training

    cfg = build_config({}, {"relational.k": 2, "train.max_steps": 3, "train.batch_size": 16, "train.progress": False,
                            "train.runs_dir": str(tmp_path / "runs"), "train.run_name": name, "eval.epochs": 2,
                            "eval.compare_random": True, **overrides})
    return run_training(cfg, log=lambda *_: None)[1]


def test_transfer_evaluates_on_the_other_dataset(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = tmp_path / "folder" / split / cls
            folder.mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    metrics = _tiny_run(tmp_path, "transfer", **{"eval.dataset": "imagefolder", "eval.root": str(tmp_path / "folder")})
    assert metrics["dataset"] == "digits" and metrics["eval_dataset"] == "imagefolder"
    correct = metrics["linear_top1"] * 12 / 100  # scored on the folder's 12 test images, not digits' 450
    assert abs(correct - round(correct)) < 1e-6


def test_finetune_protocol_in_a_run(tmp_path):
    metrics = _tiny_run(tmp_path, "ft", **{"eval.protocol": "finetune", "finetune.epochs": 1})
    assert "linear_top1" not in metrics
    assert 0 <= metrics["finetune_top1"] <= 100 and 0 <= metrics["random_init_finetune_top1"] <= 100


def test_deepcluster_loss_is_the_weighted_cross_entropy_in_one_process():
    """The loss written out for several ranks equals torch's weighted mean in a single process."""
    method = _method("deepcluster")
    method.cluster_weights.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    method.pseudo_labels.copy_(torch.arange(40) % 4)
    views, indices = torch.randn(8, 3, 16, 16), torch.arange(8) * 3
    out = method.training_step(views, torch.zeros(8, dtype=torch.long), indices)
    logits = method.classifier(method.backbone(views)).float()  # train mode: the same batch statistics
    expected = torch.nn.functional.cross_entropy(logits, method.pseudo_labels[indices], weight=method.cluster_weights)
    torch.testing.assert_close(out.loss, expected)
