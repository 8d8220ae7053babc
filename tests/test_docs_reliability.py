"""docs/RELIABILITY.md stays true: every test it names exists, and its counts match its tables."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "RELIABILITY.md"


def _rows(prefix: str) -> list[str]:
    """Table rows whose first cell is a case number: `12` for bad inputs, `F3` for faults."""
    pattern = re.compile(rf"^\| {prefix}\d+ \|")
    return [line for line in DOC.read_text().splitlines() if pattern.match(line)]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_named_test_exists() -> None:
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", DOC.read_text())
    assert len(cited) > 50
    missing = [f"{file}::{name}" for file, name in cited
               if not (REPO / "tests" / file).exists() or name not in _test_names(REPO / "tests" / file)]
    assert missing == []


def test_every_row_names_a_test_and_the_counts_match() -> None:
    inputs, faults = _rows(""), _rows("F")
    assert all("::test_" in row or "same test" in row for row in inputs + faults)
    assert [int(row.split("|")[1]) for row in inputs] == list(range(1, len(inputs) + 1))
    assert [int(row.split("|")[1].strip()[1:]) for row in faults] == list(range(1, len(faults) + 1))
    counts = re.search(r"\*\*(\d+) bad inputs\*\* and \*\*(\d+) faults\*\*", DOC.read_text())
    assert counts is not None and (int(counts[1]), int(counts[2])) == (len(inputs), len(faults))
    assert len(inputs) >= 40 and len(faults) >= 8  # issue 11's floor
