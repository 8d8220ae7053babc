"""Files written before a run's config held only its own method's section still load: checkpoints
carried every method's section (some with keys that no longer exist), and resume and evaluation read them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from relssl.cli import main
from relssl.errors import ConfigError
from relssl.train.checkpoint import load_checkpoint, save_checkpoint
from relssl.train.config import build_config

QUICK = ["--k", "2", "--batch-size", "32", "--no-progress", "--set", "eval.epochs=2", "--no-compare-random"]


def _with_every_section(config: dict) -> dict:
    """A config dict as older versions saved it: a section for every method, one with a retired key."""
    old = dict(config)
    old["simclr"] = {"temperature": 0.5, "form": "standard", "projector_hidden": 256, "projector_dim": 64}
    old["deepcluster"] = {"num_clusters": 100, "pca_dim": None, "kmeans_iters": 20}
    old["rcl"] = {"temperature": 0.1, "retired_option": True}
    return old


def test_resume_and_eval_read_a_checkpoint_with_every_methods_section(tmp_path: Path) -> None:
    assert main(["train", "--max-steps", "3", "--runs-dir", str(tmp_path), "--run-name", "old", *QUICK]) == 0
    run = tmp_path / "old"
    ckpt = load_checkpoint(run)
    ckpt["config"] = _with_every_section(ckpt["config"])
    save_checkpoint(ckpt, run / "last.pt")
    (run / "config.yaml").write_text(yaml.safe_dump(_with_every_section(yaml.safe_load((run / "config.yaml").read_text()))))

    assert main(["train", "--resume", str(run), "--max-steps", "5", *QUICK]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == 5 and metrics["finished"] is True
    resaved = yaml.safe_load((run / "config.yaml").read_text())
    assert "rcl" not in resaved and "simclr" not in resaved and resaved["relational"]["k"] == 2
    assert set(torch.load(run / "last.pt", weights_only=True)["config"]) == set(resaved)

    assert main(["eval", "linear", "--checkpoint", str(run / "backbone.safetensors"), "--epochs", "2",
                 "--no-progress"]) == 0


def test_a_users_stale_key_in_another_methods_section_is_still_an_error() -> None:
    """Only saved configs are read leniently; a tree the user writes is checked section by section."""
    with pytest.raises(ConfigError, match="config key 'rcl.retired_option': unknown key"):
        build_config(_with_every_section({"method": "relational"}))
    cfg = build_config(_with_every_section({"method": "relational"}), check_other_methods=False)
    assert cfg.method == "relational" and "rcl" not in cfg.to_dict()


def test_an_empty_checkpoint_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty last.pt (a disk that filled up) used to end in an IndexError while the message was built."""
    (tmp_path / "last.pt").write_bytes(b"")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"relssl train: error: cannot load checkpoint {tmp_path / 'last.pt'} safely (")
    assert err.count("\n") == 1


@pytest.mark.parametrize(("method", "key", "earlier"), [
    ("nnclr", "softmax_over", "neighbours"),
    ("simsiam", "last_bn_affine", True),
    ("mocov3", "predictor_last_bn", False),
    ("dim", "local_layer", "last"),
    ("relational", "label_positives", "flip"),
    ("relational", "labelled_batch_share", 0.0),
    ("relational", "labelled_batch_rest", "unlabelled"),
])
def test_a_saved_config_that_predates_an_option_keeps_the_earlier_behaviour(method: str, key: str, earlier) -> None:
    """Issue 12 changed these defaults; a checkpoint saved before the option existed resumes as it was trained."""
    saved = build_config({"method": method}).to_dict()
    today = saved[method][key]
    assert today != earlier
    del saved[method][key]
    saved[method].pop("label_balance", None)  # added with label_positives
    assert getattr(getattr(build_config(saved, check_other_methods=False), method), key) == earlier
    assert getattr(getattr(build_config(saved), method), key) == today  # a new run's tree: today's default
    saved[method][key] = today  # written today: kept as saved
    assert getattr(getattr(build_config(saved, check_other_methods=False), method), key) == today


def test_a_saved_flip_run_config_reads_back() -> None:
    """The balance is moot for flip: its saved section holds 'weight', which reads back."""
    saved = build_config({"method": "relational", "relational": {"label_positives": "flip"}}).to_dict()
    assert saved["relational"]["label_balance"] == "weight"
    assert build_config({"method": "relational"}).relational.label_balance == "label_term"  # explicit's default
    assert build_config(saved, check_other_methods=False).relational.label_positives == "flip"
    with pytest.raises(ConfigError, match="label_balance': 'negatives' applies to label_positives 'explicit' only"):
        build_config({"method": "relational", "relational": {"label_positives": "flip", "label_balance": "negatives"}})


def test_saved_semi_supervised_configs_of_every_balance_read_back() -> None:
    """A saved section holds label_weight and the batch composition at their defaults whatever the balance."""
    for balance in ("weight", "negatives", "dense", "dense_per_anchor", "label_term"):
        saved = build_config({"method": "relational", "relational": {"label_balance": balance,
                                                                     "labelled_fraction": 0.1}}).to_dict()
        back = build_config(saved, check_other_methods=False).relational
        assert (back.label_balance, back.label_weight, back.labelled_batch_share, back.labelled_batch_rest) == (
            balance, 0.5, 0.75, "all")
