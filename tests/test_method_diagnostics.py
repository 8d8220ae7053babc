"""Method.diagnostics(): RCL's per-level numbers (clusters, largest cluster, radius, positive and queue shares)
against NumPy recomputations, recorded by the trainer at every epoch end into the log, diagnostics.csv and
metrics.json, kept across a resume, and averaged over two gloo ranks."""

import csv
import json
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

from gloo_spawn import run_ranks
from relssl.augment import AugmentConfig
from relssl.methods import Method
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import build_config
from relssl.train.run import build_backbone
from relssl.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

N, M = 48, 8  # images, batch: 6 steps per epoch
SMALL = {"rcl.projector_hidden": [16], "rcl.projector_dim": 8, "rcl.predictor_hidden": 12, "rcl.queue_size": 32,
         "rcl.momentum": 0.9, "rcl.momentum_schedule": "constant", "rcl.warmup_epochs": 1,
         "rcl.radius_quantiles": [0.2, 0.5, 0.8]}
LEVELS = (1, 2, 3)


def _arrays(seed=0):
    """48 images of 4 noisy prototypes, so that the keys have some structure to cluster."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 256, size=(4, 16, 16, 3))
    images = np.clip(protos[np.arange(N) % 4] + rng.normal(0, 20, size=(N, 16, 16, 3)), 0, 255).astype(np.uint8)
    return images, np.arange(N) % 4


def _trainer(tmp_path, max_steps, name, lines=None):
    cfg = build_config({}, {"method": "rcl", **SMALL, "train.batch_size": M, "train.max_steps": max_steps,
                            "train.progress": False, "train.log_every": 3, "train.device": "cpu"})
    images, labels = _arrays()
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    method = build_method(cfg, build_backbone(cfg), num_images=N, num_classes=4)
    return Trainer(cfg, method, images, labels, AugmentConfig(), torch.device("cpu"), run_dir,
                   log=None if lines is None else lines.append)


def _check_ranges(entry):
    for h in LEVELS:
        assert 1 <= entry[f"clusters_l{h}"] <= N and entry[f"clusters_l{h}"] == int(entry[f"clusters_l{h}"])
        assert 1 / N <= entry[f"largest_share_l{h}"] <= 1.0
        for key in ("positive_share", "queue_share"):
            assert 0.0 <= entry[f"{key}_l{h}"] <= 1.0
    for a, b in zip(LEVELS, LEVELS[1:]):  # nested levels: never more clusters above
        assert entry[f"clusters_l{b}"] <= entry[f"clusters_l{a}"]


# ----------------------------------------------------------------------------- the hook


def test_default_hook_is_empty_and_methods_without_it_write_nothing(digits_run):
    assert Method.diagnostics(Method(create_backbone("conv4"))) == {}
    assert not (digits_run / "diagnostics.csv").exists()  # a Relational Reasoning run
    assert "diagnostics" not in json.loads((digits_run / "metrics.json").read_text())


def test_rcl_shares_equal_a_numpy_recount_of_positives_and_queue_members():
    cfg = build_config({}, {"method": "rcl", **SMALL, "rcl.radii_rule": "fixed", "rcl.radii": [0.1, 0.2, 0.3]})
    torch.manual_seed(0)
    method = build_method(cfg, create_backbone("conv4"), num_images=N, num_classes=4)
    labels = np.stack([np.arange(N), np.arange(N) // 2, np.arange(N) // 4, np.arange(N) // 24], axis=1)
    g = torch.Generator().manual_seed(0)
    expected = []
    for step in range(5):
        if step == 2:
            method.set_level_labels(torch.from_numpy(labels))  # hand labels, no hierarchy: nothing moves them
        idx = torch.randperm(N, generator=g)[:M]
        views = torch.randn(2 * M, 3, 16, 16, generator=g)
        bank = method.queue.features().numpy().copy()
        rows_idx = method.queue.sample_indices().numpy().copy()
        with torch.no_grad():
            k1, k2 = method.target(views[:M]).numpy(), method.target(views[M:]).numpy()
        pos, same = [], []
        for key in (k2, k1):  # z' of each direction: the queue row of largest cosine with the key
            if step >= 2 and len(bank):
                nearest = rows_idx[(key / np.linalg.norm(key, axis=1, keepdims=True) @ bank.T).argmax(axis=1)]
                pos.append(labels[idx][:, 1:] == labels[nearest][:, 1:])
            else:
                pos.append(np.ones((M, 3), dtype=bool))  # warm-up: every criterion positive
        current = labels if step >= 2 else np.tile(np.arange(N)[:, None], (1, 4))
        for c in LEVELS:
            same.append(np.mean([(current[rows_idx, c] == current[i, c]).mean() for i in idx.numpy()])
                        if len(rows_idx) else 0.0)
        expected.append((np.concatenate(pos).mean(axis=0), np.array(same)))
        method.training_step(views, torch.full((M,), -1), idx)
    got = method.diagnostics()
    for j, c in enumerate(LEVELS):
        assert got[f"positive_share_l{c}"] == pytest.approx(np.mean([p[j] for p, _ in expected]), abs=1e-6)
        assert got[f"queue_share_l{c}"] == pytest.approx(np.mean([s[j] for _, s in expected]), abs=1e-6)
        sizes = np.bincount(labels[:, c])
        assert got[f"clusters_l{c}"] == len(np.unique(labels[:, c]))
        assert got[f"largest_share_l{c}"] == pytest.approx(sizes.max() / N)
        assert got[f"radius_l{c}"] == [0.1, 0.2, 0.3][c - 1]
    assert 0.0 < got["positive_share_l1"] < 1.0 and got["queue_share_l3"] > got["queue_share_l1"] > 0.0


# ----------------------------------------------------------------------------- the trainer records them


def test_every_epoch_and_a_last_partial_one_go_to_the_log_csv_and_state(tmp_path):
    lines = []
    trainer = _trainer(tmp_path, 15, "run", lines)  # epochs 0 (warm-up) and 1 whole, 2 partial
    trainer.fit()
    history = trainer.state.diagnostics
    assert [(e["epoch"], e["step"]) for e in history] == [(0, 6), (1, 12), (2, 15)]
    for entry in history:
        _check_ranges(entry)
    assert all(history[0][f"positive_share_l{h}"] == 1.0 for h in LEVELS)  # warm-up: Eq. 1, all positive
    assert "radius_l1" not in history[0] and history[1]["radius_l1"] < history[1]["radius_l3"]
    assert any(e[f"positive_share_l{h}"] < 1.0 for e in history[1:] for h in LEVELS)

    # the per-step positive_rate of train_log.csv is the mean over criteria of the positive shares
    steps = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    for entry in history:
        rates = [float(r["positive_rate"]) / 100 for r in steps if int(r["epoch"]) == entry["epoch"]]
        assert np.mean([entry[f"positive_share_l{h}"] for h in LEVELS]) == pytest.approx(np.mean(rates), abs=1e-5)
    # the last entry's cluster numbers are those of the labels the run ended with
    saved = load_checkpoint(tmp_path / "run")["method"]["level_labels"].numpy()
    for h in LEVELS:
        assert history[-1][f"clusters_l{h}"] == len(np.unique(saved[:, h]))
        assert history[-1][f"largest_share_l{h}"] == pytest.approx(np.bincount(saved[:, h]).max() / N)

    rows = list(csv.DictReader((tmp_path / "run" / "diagnostics.csv").open()))
    assert len(rows) == 3 and list(rows[0])[:2] == ["epoch", "step"]
    for row, entry in zip(rows, history):
        for key, value in entry.items():
            assert row[key] != "" and float(row[key]) == pytest.approx(value, rel=1e-5), key
    assert rows[0]["radius_l1"] == ""  # not chosen during the warm-up
    diagnostic_lines = [line for line in lines if " diagnostics: " in line]  # the log also has progress lines
    assert len(diagnostic_lines) == 3 and all(line.startswith(f"epoch {e} (step {s}) diagnostics: clusters_l1=")
                                              for line, (e, s) in zip(diagnostic_lines, [(0, 6), (1, 12), (2, 15)]))


def test_a_resumed_run_keeps_the_history_and_continues_it_exactly(tmp_path):
    straight = _trainer(tmp_path, 18, "straight")
    straight.fit()
    first = _trainer(tmp_path, 12, "split")
    first.fit()
    resumed = _trainer(tmp_path, 18, "split")
    resumed.load_state_dict(load_checkpoint(tmp_path / "split"))
    assert [e["epoch"] for e in resumed.state.diagnostics] == [0, 1]
    resumed.fit()
    assert resumed.state.diagnostics == straight.state.diagnostics
    assert [e["epoch"] for e in resumed.state.diagnostics] == [0, 1, 2]
    assert ((tmp_path / "split" / "diagnostics.csv").read_text()
            == (tmp_path / "straight" / "diagnostics.csv").read_text())


def test_an_rcl_run_writes_its_diagnostics_into_metrics_json_at_every_epoch(tmp_path):
    from relssl.train.run import run_training

    cfg = build_config({}, {
        "method": "rcl", "rcl.projector_hidden": [32], "rcl.projector_dim": 16, "rcl.predictor_hidden": 32,
        "rcl.queue_size": 256, "rcl.warmup_epochs": 1, "train.epochs": 2, "train.batch_size": 64,
        "train.device": "cpu", "train.progress": False, "train.runs_dir": str(tmp_path), "train.run_name": "rcl",
        "eval.epochs": 1, "eval.compare_random": False,
    })
    lines = []
    run_dir, metrics = run_training(cfg, log=lines.append)
    saved = json.loads((run_dir / "metrics.json").read_text())
    per_epoch = saved["diagnostics"]["per_epoch"]
    assert [e["epoch"] for e in per_epoch] == [0, 1] and saved["diagnostics"]["last"] == per_epoch[-1]
    assert per_epoch[-1]["step"] == metrics["train_steps"]
    for entry in per_epoch:
        for h in LEVELS:
            assert 1 <= entry[f"clusters_l{h}"] <= 1347 and 0.0 < entry[f"largest_share_l{h}"] <= 1.0
            assert 0.0 <= entry[f"positive_share_l{h}"] <= 1.0 and 0.0 <= entry[f"queue_share_l{h}"] <= 1.0
    radii = [per_epoch[1][f"radius_l{h}"] for h in LEVELS]  # the adaptive rule's, chosen after the warm-up
    assert 0.0 < radii[0] < radii[1] < radii[2] <= 2.0
    assert per_epoch[1]["clusters_l1"] > per_epoch[1]["clusters_l3"] > 1
    assert len([line for line in lines if " diagnostics: " in line]) == 2
    assert len(list(csv.DictReader((run_dir / "diagnostics.csv").open()))) == 2


# ----------------------------------------------------------------------------- two gloo ranks


def _gloo_worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        cfg = build_config({}, {"method": "rcl", **SMALL, "rcl.radii_rule": "fixed", "rcl.radii": [0.1, 0.2, 0.3]})
        torch.manual_seed(0)
        method = build_method(cfg, create_backbone("conv4"), num_images=N, num_classes=4)
        method.set_level_labels(torch.from_numpy(np.stack([np.arange(N), np.arange(N) // 2, np.arange(N) // 4,
                                                           np.arange(N) // 24], axis=1)))
        g = torch.Generator().manual_seed(rank)  # different local batches
        for _ in range(4):
            idx = torch.randperm(N, generator=g)[:4]
            method.training_step(torch.randn(8, 3, 16, 16, generator=g), torch.full((4,), -1), idx)
        steps = method._diag_steps
        local = [(method._positive_sum / steps).tolist(), (method._queue_same_sum / steps).tolist()]
        torch.save({"local": local, "diagnostics": method.diagnostics()}, out_dir / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shares_are_averaged_over_ranks(tmp_path):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this PyTorch build")
    a, b = run_ranks(_gloo_worker, tmp_path, 2)
    assert a["diagnostics"] == b["diagnostics"]
    assert a["local"] != b["local"]
    for j, h in enumerate(LEVELS):
        for i, key in enumerate(("positive_share", "queue_share")):
            mean = (a["local"][i][j] + b["local"][i][j]) / 2
            assert a["diagnostics"][f"{key}_l{h}"] == pytest.approx(mean, abs=1e-6)
