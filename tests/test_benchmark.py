"""Benchmark harness: grid parsing and expansion, resume skipping with a fake runner, reports."""

import csv
import fcntl
import json
import os
from pathlib import Path

import pytest
import yaml

from relssl.benchmark import (
    BenchmarkError,
    GridError,
    format_mean_std,
    format_paper,
    load_grid,
    parse_paper_value,
    plan_cells,
    run_benchmark,
)
from relssl.benchmark.report import cell_rows, markdown_report
from relssl.cli import main as benchmark_main
from relssl.train.setup import write_config

REPO = Path(__file__).resolve().parents[1]

GRID = {
    "name": "toy",
    "description": "a toy grid",
    "metric": ["linear_top1", "linear_top5"],
    "base": {"data": {"dataset": "digits"}, "backbone.name": "conv4", "train": {"epochs": 3}},
    "scales": {
        "smoke": {"train": {"max_steps": 5}, "relational": {"k": 4}, "axes": {"seed": [0]}, "note": "tiny"},
        "paper": {"train": {"epochs": 200}},
    },
    "axes": {
        "method": [{"label": "random", "title": "Random init"}, "relational"],
        "k": {"key": "relational.k", "values": [2, {"label": "k8", "value": 8, "title": "K = 8"}]},
        "seed": [0, 1, 2],
    },
    "rules": [{"when": {"k": "k8"}, "set": {"train.batch_size": 16}}],
    "rows": "method",
    "columns": "k",
    "paper": {"relational": {"2": 70, "k8": "75.5±0.25"}, "random": {"2": None}},
    "paper_note": "from somewhere",
}


def _write(tmp_path: Path, grid: dict, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False, allow_unicode=True))
    return path


def _grid(tmp_path, scale=None, environ=None, **changes):
    return load_grid(_write(tmp_path, {**GRID, **changes}), scale, environ or {})


class FakeRunner:
    """Writes metrics.json (and config.yaml) like run_training, without training."""

    def __init__(self, value=50.0, finished=True, fail_on=()):
        self.calls: list[str] = []
        self.value, self.finished, self.fail_on = value, finished, fail_on

    def __call__(self, config, run_dir, log):
        self.calls.append(run_dir.name)
        if run_dir.name in self.fail_on:
            raise RuntimeError("boom")
        assert Path(config.train.runs_dir) / config.train.run_name == run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(config, run_dir)
        metrics = {"finished": self.finished, "seed": config.seed, "linear_top1": self.value + config.seed,
                   "linear_protocol": {"epochs": config.eval.epochs}}
        if config.eval.compare_random:
            metrics["random_init_linear_top1"] = 10.0 + config.seed
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics


# ----------------------------------------------------------------------------- grid


def test_expansion_ids_scale_and_override_precedence(tmp_path):
    grid = _grid(tmp_path, "smoke")
    cells = grid.cells()
    assert grid.scale == "smoke" and grid.scale_note == "tiny"
    assert [c.run_name for c in cells] == ["random_2-seed0", "random_k8-seed0", "relational_2-seed0",
                                           "relational_k8-seed0"]
    rel2, rel8 = cells[2], cells[3]
    # base < scale < axis < rule
    assert rel2.overrides["train.max_steps"] == 5
    assert rel2.overrides["relational.k"] == 2 and rel8.overrides["relational.k"] == 8
    assert rel8.overrides["train.batch_size"] == 16 and "train.batch_size" not in rel2.overrides
    assert grid.base == {"data": {"dataset": "digits"}, "backbone": {"name": "conv4"}, "train": {"epochs": 3}}
    # the random-init cells read their donor's run, which is asked to compute it
    assert cells[0].random_init and cells[0].donor == "relational_2-seed0" and cells[0].overrides == {}
    assert rel2.overrides["eval.compare_random"] is True
    assert grid.axis("k").title("k8") == "K = 8"


def test_paper_scale_keeps_all_seeds_and_default_scale(tmp_path):
    paper = _grid(tmp_path, "paper")
    assert len(paper.cells()) == 2 * 2 * 3
    assert paper.cells()[6].run_name == "relational_2-seed0" and paper.cells()[6].overrides["train.epochs"] == 200
    assert _grid(tmp_path).scale == "smoke"  # first scale listed
    assert _grid(tmp_path, default_scale="paper").scale == "paper"
    with pytest.raises(GridError, match="no scale named 'huge'; this grid has smoke, paper"):
        _grid(tmp_path, "huge")


def test_env_interpolation_and_missing_variable(tmp_path):
    base = {"data": {"dataset": "imagefolder", "root": "${DATA_DIR}/cifar"}}
    grid = _grid(tmp_path, "smoke", {"DATA_DIR": "/x"}, base=base)
    assert grid.base["data"]["root"] == "/x/cifar"
    with pytest.raises(GridError, match=r"key 'base.data.root': environment variable DATA_DIR is not set"):
        _grid(tmp_path, "smoke", {}, base=base)
    grid = _grid(tmp_path, "smoke", {}, base={"data": {"dataset": "imagefolder", "root": "${DATA_DIR:-/d}"}})
    assert grid.base["data"]["root"] == "/d"
    # a variable used by another scale only need not be set
    scales = {**GRID["scales"], "paper": {"data.root": "${ONLY_PAPER}"}}
    assert _grid(tmp_path, "smoke", {}, scales=scales).scale == "smoke"
    with pytest.raises(GridError, match="ONLY_PAPER"):
        _grid(tmp_path, "paper", {}, scales=scales)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"colums": "k"}, "key 'colums': unknown key"),
        ({"name": "bad name"}, "key 'name'"),
        ({"rows": "dataset"}, "key 'rows': 'dataset' is not an axis"),
        ({"columns": "seed"}, "seed cannot be a table axis"),
        ({"axes": {"method": [{"label": "x", "sett": {}}], "seed": [0]}}, r"axes.method\[0\].sett': unknown key"),
        ({"axes": {"method": ["relational"], "lr": [0.1, 0.2]}}, "axis 'lr' has no default config key"),
        ({"axes": {"method": ["relational", "relational"]}}, "appears twice"),
        ({"axes": {"method": ["relational"], "seed": [-1]}, "scales": {"smoke": {}}}, "non-negative integers"),
        ({"paper": {"relationl": {"2": 1}}}, "key 'paper.relationl': not a row label"),
        ({"paper": {"relational": {"k16": 1}}}, "not a column label"),
        ({"paper": {"relational": {"2": "about 70"}}}, "not a number"),
        ({"rules": [{"when": {"k": "k9"}, "set": {"a": 1}}]}, "'k9' is not a label of axis 'k'"),
        ({"scales": {"smoke": {"axes": {"dataset": ["digits"]}}}}, "not an axis of this grid"),
    ],
)
def test_bad_grids_name_the_key(tmp_path, changes, message):
    grid = {**GRID, **changes}
    if "axes" in changes:
        grid.update(rows="method", columns=[a for a in changes["axes"] if a not in ("method", "seed")] or "method",
                    paper={}, rules=[])
        if grid["columns"] == "method":
            grid["axes"] = {**changes["axes"], "backbone": ["conv4"]}
            grid["columns"] = "backbone"
    with pytest.raises(GridError, match=message):
        load_grid(_write(tmp_path, grid), "smoke", {})


def test_random_without_a_donor_is_an_error(tmp_path):
    grid = _grid(tmp_path, "smoke", axes={"method": ["random"], "backbone": ["conv4"]}, columns="backbone",
                 paper={}, rules=[])
    with pytest.raises(GridError, match="random_conv4-seed0 .* needs another method"):
        grid.cells()


def test_paper_values():
    assert parse_paper_value(46.17) == (46.17, None)
    assert parse_paper_value("46.17±0.17") == (46.17, 0.17)
    assert parse_paper_value("46.17 +- 0.17") == (46.17, 0.17)
    assert parse_paper_value("n/a") is None and parse_paper_value(None) is None
    with pytest.raises(GridError):
        parse_paper_value("big")


# ----------------------------------------------------------------------------- running


def test_every_cell_is_validated_before_any_runs(tmp_path):
    grid = _grid(tmp_path, "smoke", rules=[{"when": {"k": "k8"}, "set": {"relational.kk": 3}}])
    runner = FakeRunner()
    with pytest.raises(BenchmarkError, match=r"relational_k8-seed0: config key 'relational.kk': unknown key"):
        run_benchmark(grid, tmp_path / "out", runner=runner, echo=lambda s: None)
    assert runner.calls == []


def test_resume_skips_finished_cells(tmp_path):
    grid = _grid(tmp_path, "paper")
    out = tmp_path / "out"
    first = FakeRunner()
    result = run_benchmark(grid, out, runner=first, echo=lambda s: None)
    assert len(first.calls) == 6 and sorted(result.ran) == sorted(first.calls) and not result.skipped
    run_dir = out / "toy" / "paper" / "relational_2-seed1"
    assert json.loads((run_dir / "metrics.json").read_text())["linear_top1"] == 51.0

    again = FakeRunner()
    lines: list[str] = []
    result = run_benchmark(grid, out, runner=again, echo=lines.append)
    assert again.calls == [] and len(result.skipped) == 6
    assert any(line.startswith("skip relational_2-seed1: already finished (linear_top1 51.00)") for line in lines)

    # a stopped run (finished: false plus a checkpoint) resumes; a folder with nothing to resume is moved aside
    (out / "toy/paper/relational_k8-seed2/metrics.json").write_text(json.dumps({"finished": False}))
    (out / "toy/paper/relational_k8-seed2/last.pt").write_bytes(b"")
    (out / "toy/paper/relational_2-seed0/metrics.json").unlink()
    states = {pc.name: pc.state for pc in plan_cells(grid, out)}
    assert states["relational_k8-seed2"] == "resume" and states["relational_2-seed0"] == "restart"
    assert states["random_2-seed0"] == "derived" and states["relational_2-seed1"] == "done"
    third = FakeRunner()
    run_benchmark(grid, out, runner=third, echo=lambda s: None)
    assert sorted(third.calls) == ["relational_2-seed0", "relational_k8-seed2"]
    assert (out / "toy/paper/relational_2-seed0.incomplete/config.yaml").is_file()


def test_a_cell_another_process_is_running_is_neither_moved_nor_resumed(tmp_path):
    """Two benchmarks on one grid: the second leaves the first's live run folders alone (it once moved one aside)."""
    grid = _grid(tmp_path, "paper")
    out = tmp_path / "out"
    run_benchmark(grid, out, runner=FakeRunner(), echo=lambda s: None)
    live, stopped = out / "toy/paper/relational_2-seed0", out / "toy/paper/relational_k8-seed2"
    (live / "metrics.json").unlink()  # no checkpoint yet: a restart
    (stopped / "metrics.json").write_text(json.dumps({"finished": False}))
    (stopped / "last.pt").write_bytes(b"")  # a resume
    holders = []
    for run_dir in (live, stopped):  # the other process's lock: its own open file, so flock conflicts
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"4242\n", 0)
        holders.append(fd)
    try:
        runner, lines = FakeRunner(), []
        result = run_benchmark(grid, out, runner=runner, echo=lines.append)
    finally:
        for fd in holders:
            os.close(fd)
    assert runner.calls == [] and sorted(result.failed) == ["relational_2-seed0", "relational_k8-seed2"]
    assert live.is_dir() and not list(live.parent.glob("*.incomplete*"))
    assert any("relational_2-seed0: skipped: run directory" in line and "pid 4242" in line for line in lines)
    again = FakeRunner()  # the other process gone: the cells run
    run_benchmark(grid, out, runner=again, echo=lambda s: None)
    assert sorted(again.calls) == ["relational_2-seed0", "relational_k8-seed2"]


def test_finished_run_with_another_config_stops_before_running(tmp_path):
    out = tmp_path / "out"
    run_benchmark(_grid(tmp_path, "smoke"), out, runner=FakeRunner(), echo=lambda s: None)
    scales = {**GRID["scales"], "smoke": {**GRID["scales"]["smoke"], "train": {"max_steps": 7}}}
    changed = _grid(tmp_path, "smoke", scales=scales)
    runner = FakeRunner()
    with pytest.raises(BenchmarkError, match=r"different config \(train.max_steps: 5 -> 7\)"):
        run_benchmark(changed, out, runner=runner, echo=lambda s: None)
    assert runner.calls == []
    # settings that do not change the numbers are ignored
    run_benchmark(_grid(tmp_path, "smoke"), out, runner=runner, sets={"train.device": "cpu"}, echo=lambda s: None)
    assert runner.calls == []


def test_only_selects_cells_and_their_donors(tmp_path):
    runner = FakeRunner()
    run_benchmark(_grid(tmp_path, "smoke"), tmp_path / "out", runner=runner, only=["random_2-*"], echo=lambda s: None)
    assert runner.calls == ["relational_2-seed0"]


def test_interrupted_run_stops_the_session(tmp_path):
    runner = FakeRunner(finished=False)
    result = run_benchmark(_grid(tmp_path, "smoke"), tmp_path / "out", runner=runner, echo=lambda s: None)
    assert result.interrupted and runner.calls == ["relational_2-seed0"] and not result.ran
    assert result.csv_path is not None and result.csv_path.is_file()


def test_failures_stop_or_keep_going(tmp_path):
    grid = _grid(tmp_path, "smoke")
    with pytest.raises(RuntimeError, match="boom"):
        run_benchmark(grid, tmp_path / "a", runner=FakeRunner(fail_on={"relational_2-seed0"}), echo=lambda s: None)
    runner = FakeRunner(fail_on={"relational_2-seed0"})
    result = run_benchmark(grid, tmp_path / "b", runner=runner, keep_going=True, echo=lambda s: None)
    assert result.failed == ["relational_2-seed0"] and result.ran == ["relational_k8-seed0"]
    rows = {r["run_name"]: r for r in csv.DictReader(result.csv_path.open())}
    assert rows["relational_2-seed0"]["status"] == "failed" and "boom" in rows["relational_2-seed0"]["error"]
    assert rows["random_2-seed0"]["status"] == "failed"


# ----------------------------------------------------------------------------- reports


def test_mean_std_formatting():
    assert format_mean_std([]) == "—"
    assert format_mean_std([75.0]) == "75.00"
    assert format_mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"  # sample std
    assert format_mean_std([1.0, 3.0], expected=3) == "2.00 ± 1.41 (n=2)"
    assert format_paper((46.17, 0.17)) == "46.17 ± 0.17" and format_paper((7.6, 0.4)) == "7.6 ± 0.4" and format_paper((75.0, None)) == "75"
    assert format_paper(None) == "n/a"


def test_csv_and_markdown_hold_runs_means_and_the_paper_column(tmp_path):
    grid = _grid(tmp_path, "paper")
    result = run_benchmark(grid, tmp_path / "out", runner=FakeRunner(), echo=lambda s: None)
    rows = list(csv.DictReader(result.csv_path.open()))
    assert len(rows) == 12
    assert list(rows[0])[:12] == ["grid", "scale", "cell_id", "run_name", "method", "k", "seed", "status",
                                  "table_metric", "run_dir", "source_run", "error"]
    by_name = {r["run_name"]: r for r in rows}
    assert by_name["relational_k8-seed2"]["linear_top1"] == "52"
    assert by_name["relational_k8-seed2"]["linear_protocol.epochs"] == "100"
    random_row = by_name["random_k8-seed1"]
    assert random_row["linear_top1"] == "11" and random_row["source_run"].endswith("relational_k8-seed1")
    assert "random_init_linear_top1" not in random_row or random_row["random_init_linear_top1"] == ""

    md = result.markdown_path.read_text()
    assert "| method | 2 | paper | K = 8 | paper |" in md
    assert "| relational | 51.00 ± 1.00 | 70 | 51.00 ± 1.00 | 75.5 ± 0.25 |" in md
    assert "| Random init | 11.00 ± 1.00 | n/a | 11.00 ± 1.00 | n/a |" in md
    assert "## linear_top5" in md and "Paper numbers: from somewhere" in md
    assert "12 of 12 cell runs finished" in md


def test_partial_results_show_counts_and_dashes(tmp_path):
    grid = _grid(tmp_path, "paper")
    planned = plan_cells(grid, tmp_path / "out")
    runner = FakeRunner()
    for pc in planned:
        if pc.name in ("relational_2-seed0", "relational_2-seed1"):
            runner(pc.config, pc.run_dir, print)
    md = markdown_report(grid, cell_rows(grid, planned))
    assert "| relational | 50.50 ± 0.71 (n=2) | 70 | — | 75.5 ± 0.25 |" in md
    assert "| Random init | 10.50 ± 0.71 (n=2) | n/a | — | n/a |" in md


def test_shipped_grids_parse(tmp_path):
    env = {"RELSSL_CIFAR10": str(tmp_path)}
    for path in sorted((REPO / "configs" / "benchmarks").glob("*.yaml")):
        for scale in ("smoke", "paper"):
            grid = load_grid(path, scale, env)
            cells = grid.cells()
            assert cells, path
    table1 = load_grid(REPO / "configs/benchmarks/table1_paper.yaml", "paper", env)
    assert len(table1.cells()) == (7 * 6 - 1) * 3
    assert table1.paper["relational"]["cifar100"] == (46.17, 0.17)
    assert table1.paper["random"]["stl10-finetune"] is None
    clusters = {c.labels["protocol"]: c.overrides.get("deepcluster.num_clusters")
                for c in table1.cells() if c.labels["method"] == "deepcluster"}
    assert clusters == {"cifar100": 1000, "tiny-imagenet": 2000, "c10-c100": None, "c100-c10": 1000,
                        "cifar100-20": 1000, "stl10-finetune": None}  # 10 x the pretraining classes (reference code)
    smoke = load_grid(REPO / "configs/benchmarks/table1_smoke_cifar10.yaml", "smoke", env)
    methods = ["supervised", "random", "deepcluster", "rotnet", "dim", "simclr", "relational"]
    assert [(c.labels["method"], c.seed) for c in smoke.cells()] == [(m, s) for m in methods for s in (0, 1, 2)]
    assert smoke.cells()[-1].overrides["data.root"] == str(tmp_path)
    with pytest.raises(GridError, match="RELSSL_CIFAR10 is not set"):
        load_grid(REPO / "configs/benchmarks/table1_smoke_cifar10.yaml", "smoke", {})


def test_cli_list_and_errors(tmp_path, capsys):
    path = _write(tmp_path, GRID)
    assert benchmark_main(["benchmark", "--config", str(path), "--output", str(tmp_path / "o"), "--list"]) == 0
    out = capsys.readouterr().out
    assert "derived    random_2-seed0  <- relational_2-seed0 (random init)" in out
    assert "new        relational_k8-seed0" in out
    bad = _write(tmp_path, {**GRID, "rules": [{"when": {"k": "k8"}, "set": {"train.epochz": 1}}]}, "bad.yaml")
    assert benchmark_main(["benchmark", "--config", str(bad), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "relssl benchmark: error: 1 cell(s) cannot run" in err and "train.epochz" in err
    assert benchmark_main(["benchmark", "--config", str(tmp_path / "missing.yaml")]) == 2
