"""Paper 2's semi-supervised protocol: the class-balanced labelled subset and `eval.protocol: semi` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from relssl.cli import main
from relssl.cli.train import base_config_tree
from relssl.errors import ConfigError
from relssl.evaluate.subset import balanced_subset, per_class_count
from relssl.train.config import build_config

REPO = Path(__file__).resolve().parents[1]


def _labels() -> np.ndarray:
    """Unequal classes: 100, 37, 5 and 1 images, shuffled."""
    labels = np.repeat(np.arange(4), [100, 37, 5, 1])
    return np.random.default_rng(0).permutation(labels)


# --- the subset ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "counts"), [
    (0.1, [10, 4, 1, 1]),     # 3.7 -> 4; 0.5 -> 0 (round half to even) -> at least 1; 0.1 -> 1
    (0.01, [1, 1, 1, 1]),     # every class keeps at least one image
    (0.5, [50, 18, 2, 1]),    # 18.5 -> 18 and 2.5 -> 2 (Python's round); 0.5 of one image -> 1
    (1.0, [100, 37, 5, 1]),   # everything
])
def test_subset_has_exactly_round_f_nc_per_class(fraction: float, counts: list[int]) -> None:
    labels = _labels()
    index = balanced_subset(labels, fraction, seed=0)
    assert [int((labels[index] == c).sum()) for c in range(4)] == counts
    assert counts == [per_class_count(fraction, n) for n in (100, 37, 5, 1)]
    assert np.array_equal(index, np.unique(index))  # sorted, no repeats
    assert index.min() >= 0 and index.max() < len(labels)


def test_subset_is_seeded() -> None:
    labels = np.repeat(np.arange(10), 500)  # CIFAR-10 at a tenth of its size
    first = balanced_subset(labels, 0.01, seed=3)
    assert np.array_equal(first, balanced_subset(labels.copy(), 0.01, seed=3))
    others = [balanced_subset(labels, 0.01, seed=s) for s in (4, 5)]
    assert all(not np.array_equal(first, o) for o in others)
    assert all(len(o) == len(first) == 50 for o in others)  # different images, same per-class counts
    assert not np.array_equal(balanced_subset(labels, 0.1, 0), balanced_subset(labels, 0.1, 1))


@pytest.mark.parametrize("fraction", [0, 0.0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_fraction_is_an_error(fraction: object) -> None:
    with pytest.raises(ValueError, match=r"eval\.label_fraction must be a number with 0 < fraction <= 1"):
        balanced_subset(_labels(), fraction, seed=0)  # type: ignore[arg-type]


def test_bad_labels_and_seed_are_errors() -> None:
    with pytest.raises(ValueError, match="fully labelled"):
        balanced_subset(np.array([0, 1, -1, 1]), 0.5, seed=0)
    with pytest.raises(ValueError, match="1-D array of integer"):
        balanced_subset(np.zeros((3, 2), dtype=np.int64), 0.5, seed=0)
    with pytest.raises(ValueError, match="seed"):
        balanced_subset(_labels(), 0.5, seed=-1)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"eval.label_fraction": 0}, "eval.label_fraction"),
    ({"eval.label_fraction": 1.01}, "eval.label_fraction"),
    ({"eval.label_fraction": "lots"}, "eval.label_fraction"),
    ({"eval.subset_seed": -2}, "eval.subset_seed"),
    ({"eval.protocol": "semi-supervised"}, "eval.protocol"),
])
def test_semi_config_errors_name_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        build_config({}, overrides)
    cfg = build_config({}, {"eval.protocol": "semi"})
    assert (cfg.eval.label_fraction, cfg.eval.subset_seed) == (0.01, 0)


# --- end to end on the built-in digits set -----------------------------------------------------


def _tiny_run(tmp_path: Path, name: str, **overrides) -> tuple[Path, dict]:
    from relssl.train.run import run_training

    cfg = build_config({}, {"relational.k": 2, "train.max_steps": 3, "train.batch_size": 16, "train.progress": False,
                            "train.runs_dir": str(tmp_path / "runs"), "train.run_name": name,
                            "train.device": "cpu", "finetune.epochs": 1, **overrides})
    return run_training(cfg, log=lambda *_: None)


def test_semi_protocol_in_a_run_writes_its_metrics(tmp_path: Path) -> None:
    from relssl.data import load_split

    run_dir, metrics = _tiny_run(tmp_path, "semi", **{"eval.protocol": "semi", "eval.label_fraction": 0.1,
                                                     "eval.compare_random": True})
    labels = np.asarray(load_split("digits", "train").labels)
    expected = sum(per_class_count(0.1, int((labels == c).sum())) for c in range(10))
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["eval_protocol"] == "semi" and on_disk["finished"] is True
    assert on_disk["semi_label_fraction"] == 0.1 and on_disk["semi_subset_seed"] == 0
    assert on_disk["semi_labelled_images"] == expected and 130 <= expected <= 140  # ~10 % of 1,347
    for key in ("semi_top1", "semi_top5", "random_init_semi_top1", "random_init_semi_top5"):
        assert 0.0 <= on_disk[key] <= 100.0, key
    assert on_disk["semi_top5"] >= on_disk["semi_top1"]  # 10 classes: top-5 reported for the semi protocol
    assert on_disk["finetune_protocol"] == {"epochs": 1, "lr": 1e-3, "batch_size": 64, "augment": True}
    assert not any(k.startswith(("linear_", "finetune_top")) for k in on_disk)


def test_one_percent_of_a_small_split_shrinks_the_batch(tmp_path: Path) -> None:
    # 1 % of digits' ~135 images per class is one image per class: 10 images, fewer than a batch of 64
    _, metrics = _tiny_run(tmp_path, "semi1", **{"eval.protocol": "semi", "eval.subset_seed": 4})
    assert metrics["semi_labelled_images"] == 10 and metrics["finetune_protocol"]["batch_size"] == 10
    assert metrics["semi_subset_seed"] == 4 and 0.0 <= metrics["semi_top1"] <= 100.0


# --- composing configs on the command line -----------------------------------------------------


def test_train_layers_several_config_files(tmp_path: Path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("relational: {k: 6}\neval: {epochs: 7, lr: 0.01}\n")
    tree = base_config_tree([str(run), str(REPO / "configs/eval/linear_paper2.yaml")], {})
    cfg = build_config(tree, {"eval.batch_size": 64})
    assert cfg.relational.k == 6  # kept from the first file
    assert (cfg.eval.epochs, cfg.eval.lr, cfg.eval.optimizer) == (90, 1.0, "lars")  # the later file wins
    assert cfg.eval.batch_size == 64  # --set wins over both
    from relssl.cli import build_parser

    args = build_parser().parse_args(["train", "--config", "a.yaml", "--config", "b.yaml"])
    assert args.config == ["a.yaml", "b.yaml"]


def test_eval_linear_reads_an_eval_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "probe.json"
    code = main(["eval", "linear", "--random-init", "--backbone", "conv4", "--dataset", "digits", "--no-progress",
                 "--eval-config", str(REPO / "configs/eval/linear_paper2.yaml"), "--epochs", "2",
                 "--output", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert (result["optimizer"], result["schedule"], result["epochs"]) == ("lars", "cosine", 2)
    assert result["effective_lr"] == 1.0 and result["top5"] is not None
    assert "top-5" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: {optimizer: adagrad}\n")
    assert main(["eval", "linear", "--random-init", "--backbone", "conv4", "--eval-config", str(bad)]) == 2
    assert "config key 'eval.optimizer'" in capsys.readouterr().err
    bad.write_text("train: {epochs: 3}\n")
    assert main(["eval", "linear", "--random-init", "--backbone", "conv4", "--eval-config", str(bad)]) == 2
    assert "needs an 'eval:' section" in capsys.readouterr().err
