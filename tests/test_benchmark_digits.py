"""End to end: `relssl benchmark` trains two real cells on the built-in digits set, then skips both."""

import csv
import json

import yaml

from relssl.cli import main as benchmark_main

GRID = {
    "name": "digits-e2e",
    "metric": "linear_top1",
    "base": {"data": {"dataset": "digits"}, "backbone": {"name": "conv4"}, "train": {"device": "cpu"}},
    "scales": {"smoke": {"train": {"epochs": 1, "batch_size": 64}, "relational": {"k": 2}, "eval": {"epochs": 2}}},
    "axes": {"method": ["relational", {"label": "random", "title": "Random init"}], "dataset": ["digits"],
             "seed": [0, 1]},
    "rows": "method",
    "columns": "dataset",
    "paper": {"relational": {"digits": 90}},
}


def test_two_real_cells_then_resume_skips_both(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID, sort_keys=False))
    args = ["benchmark", "--config", str(path), "--output", str(tmp_path / "out")]

    assert benchmark_main(args) == 0
    out = capsys.readouterr().out
    assert "[1/2] relational_digits-seed0: linear_top1" in out and "(paper 90)" in out
    assert "[2/2] relational_digits-seed1: linear_top1" in out
    grid_dir = tmp_path / "out" / "digits-e2e" / "smoke"
    for seed in (0, 1):
        metrics = json.loads((grid_dir / f"relational_digits-seed{seed}" / "metrics.json").read_text())
        assert metrics["finished"] is True and metrics["train_steps"] == 21  # 1,347 images / 64
        assert 0 <= metrics["random_init_linear_top1"] <= 100
    rows = {r["run_name"]: r for r in csv.DictReader((grid_dir / "results.csv").open())}
    assert set(rows) == {"relational_digits-seed0", "relational_digits-seed1", "random_digits-seed0",
                         "random_digits-seed1"}
    assert all(r["status"] == "done" for r in rows.values())
    md = (grid_dir / "results.md").read_text()
    assert "| method | digits | paper |" in md and " ± " in md and "| 90 |" in md

    mtime = (grid_dir / "relational_digits-seed0" / "metrics.json").stat().st_mtime_ns
    assert benchmark_main(args) == 0
    out = capsys.readouterr().out
    assert "skip relational_digits-seed0: already finished" in out
    assert "skip relational_digits-seed1: already finished" in out
    assert "ran 0, skipped 2 finished, 0 failed" in out
    assert (grid_dir / "relational_digits-seed0" / "metrics.json").stat().st_mtime_ns == mtime
