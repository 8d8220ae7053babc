"""Every registered method has a page docs/methods/<name>.md that lists its deviations from the paper."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relssl.methods import METHODS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods"
HEADING = "## Deviations from the paper"
BUILT_IN = ("relational", "simclr", "rotnet", "deepcluster", "dim", "supervised",
            "rcl", "mocov2", "mocov3", "byol", "simsiam", "nnclr")
# Captured at collection, so a method another test registers for a moment is not asked for a page.
REGISTERED = METHODS.names()


def deviation_bullets(text: str) -> list[str]:
    """The bullet lines ("- ...") of a page's deviations section, up to the next "## " heading."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == HEADING]
    if not starts:
        return []
    section: list[str] = []
    for line in lines[starts[0] + 1:]:
        if re.match(r"##\s", line):
            break
        section.append(line)
    return [line for line in section if line.startswith("- ") and line[2:].strip()]


def test_the_section_reader_needs_the_heading_and_a_bullet_before_the_next_heading() -> None:
    assert deviation_bullets(f"# X\n\n{HEADING}\n\nText.\n- **A.** one\n- two\n\n## Next\n- not this\n") == [
        "- **A.** one", "- two"]
    assert deviation_bullets(f"# X\n\n{HEADING}\n\nNo list here.\n\n## Next\n- a bullet of another section\n") == []
    assert deviation_bullets("# X\n\n## Deviations\n- close, but another heading\n") == []
    assert deviation_bullets(f"# X\n\n### {HEADING[3:]}\n- a sub-heading is not the section\n") == []
    assert deviation_bullets(f"# X\n- before the section\n{HEADING}\n") == []


def test_every_built_in_method_is_registered() -> None:
    assert set(BUILT_IN) <= set(REGISTERED)


@pytest.mark.parametrize("name", REGISTERED)
def test_each_method_page_lists_its_deviations_from_the_paper(name: str) -> None:
    page = DOCS / f"{name}.md"
    assert page.is_file(), f"method {name!r} has no page {page}"
    bullets = deviation_bullets(page.read_text(encoding="utf-8"))
    assert bullets, f"{page.name}: no '{HEADING}' section with at least one '- ' bullet before the next '## '"
