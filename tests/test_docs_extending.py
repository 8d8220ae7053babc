"""docs/EXTENDING.md's examples run as written, and the parts they register train through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

from relssl.cli import main
from relssl.data import DATASETS
from relssl.methods import METHODS
from relssl.models import BACKBONES

DOC = Path(__file__).resolve().parents[1] / "docs" / "EXTENDING.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a markdown text, in order."""
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_examples_run_and_their_parts_train(tmp_path: Path) -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 3
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), {"__name__": "extending_example"})  # noqa: S102 - our own doc
        assert {"barlow-lite" in METHODS, "tiny-convnet" in BACKBONES, "noise-pairs" in DATASETS} == {True}
        code = main(["train", "--method", "barlow-lite", "--backbone", "tiny-convnet", "--dataset", "noise-pairs",
                     "--max-steps", "4", "--batch-size", "32", "--runs-dir", str(tmp_path), "--run-name", "doc",
                     "--no-progress", "--set", "barlow-lite.off_diagonal_weight=0.01", "--set", "eval.epochs=2"])
        assert code == 0
        metrics = json.loads((tmp_path / "doc" / "metrics.json").read_text())
        assert metrics["finished"] is True and 0.0 <= metrics["linear_top1"] <= 100.0
    finally:
        for registry, name in ((METHODS, "barlow-lite"), (BACKBONES, "tiny-convnet"), (DATASETS, "noise-pairs")):
            if name in registry:
                registry.remove(name)
