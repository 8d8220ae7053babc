"""A finished benchmark cell is judged by its own method's settings only: changing another method's
default leaves it done, changing its own marks it invalid, and results saved with every method's
section (before runs kept only their own) still count as done."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from relssl.benchmark import load_grid, plan_cells
from relssl.methods import METHODS
from relssl.methods.relational import RelationalConfig
from relssl.methods.simclr import SimCLRConfig
from relssl.train.setup import write_config

GRID = {
    "name": "two-methods",
    "base": {"train": {"max_steps": 3}},
    "axes": {"method": ["relational", "simclr"], "backbone": ["conv4"]},
    "rows": "method",
    "columns": "backbone",
}


def _finish_every_cell(tmp_path: Path) -> list:
    """Plan the grid and write each cell's config.yaml and a finished metrics.json, as a run would."""
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID, sort_keys=False))
    grid = load_grid(path, None, {})
    planned = plan_cells(grid, tmp_path / "out")
    for pc in planned:
        assert pc.config is not None and pc.state == "new"
        pc.run_dir.mkdir(parents=True)
        write_config(pc.config, pc.run_dir)
        (pc.run_dir / "metrics.json").write_text(json.dumps({"finished": True, "linear_top1": 50.0}))
    return planned


def _states(tmp_path: Path) -> dict[str, str]:
    grid = load_grid(tmp_path / "grid.yaml", None, {})
    return {pc.name: pc.state for pc in plan_cells(grid, tmp_path / "out")}


@pytest.fixture
def changed_default() -> Iterator[Callable[[str, type], None]]:
    """Swap a method's config section for one with another default, restoring it afterwards."""
    saved = {}

    def change(method: str, section: type) -> None:
        spec = METHODS.get(method)
        saved.setdefault(method, spec)
        METHODS.add(type(spec)(spec.name, spec.cls, section, spec.summary), replace=True)

    yield change
    for spec in saved.values():
        METHODS.add(spec, replace=True)


def test_another_methods_default_does_not_invalidate_finished_cells(tmp_path: Path, changed_default) -> None:
    _finish_every_cell(tmp_path)
    assert _states(tmp_path) == {"relational_conv4-seed0": "done", "simclr_conv4-seed0": "done"}

    class HotterSimCLR(SimCLRConfig):
        temperature: float = Field(default=0.9, gt=0)

    changed_default("simclr", HotterSimCLR)
    states = _states(tmp_path)
    assert states["relational_conv4-seed0"] == "done"  # its config holds no simclr section to compare
    assert states["simclr_conv4-seed0"] == "invalid"  # its own default changed: the old number is stale


def test_its_own_default_still_invalidates_a_cell(tmp_path: Path, changed_default) -> None:
    _finish_every_cell(tmp_path)

    class MoreViews(RelationalConfig):
        k: int = Field(default=8, ge=2)

    changed_default("relational", MoreViews)
    grid = load_grid(tmp_path / "grid.yaml", None, {})
    planned = {pc.name: pc for pc in plan_cells(grid, tmp_path / "out")}
    assert planned["relational_conv4-seed0"].state == "invalid"
    assert "relational.k: 32 -> 8" in planned["relational_conv4-seed0"].problem
    assert planned["simclr_conv4-seed0"].state == "done"


def test_results_saved_with_every_methods_section_still_count(tmp_path: Path) -> None:
    planned = _finish_every_cell(tmp_path)
    relational = next(pc for pc in planned if pc.name == "relational_conv4-seed0")
    saved = yaml.safe_load((relational.run_dir / "config.yaml").read_text())
    # an older run's config.yaml carried every method's section, some with other values than today's
    saved["simclr"] = {"temperature": 0.1, "form": "standard", "projector_hidden": 256, "projector_dim": 64}
    saved["rcl"] = {"no_longer_a_key": 1}
    (relational.run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert _states(tmp_path)["relational_conv4-seed0"] == "done"
