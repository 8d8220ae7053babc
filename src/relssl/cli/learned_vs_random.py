"""The closing table of a run with a random-init comparison: learned vs random init, raw vs standardised features.

A raw-feature probe alone flatters pretraining: a random network's features are badly scaled,
and z-scoring them (the standardised protocol) often recovers most of the gap. So the table
shows both, and the sentence under it says only what the four numbers and the test size support.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["KEYS", "comparison_lines", "has_comparison"]

#: (row, column) -> metrics.json key of the linear probe's top-1.
KEYS = {
    ("learned", "raw"): "linear_top1",
    ("learned", "standardised"): "linear_std_top1",
    ("random init", "raw"): "random_init_linear_top1",
    ("random init", "standardised"): "random_init_linear_std_top1",
}


def has_comparison(metrics: Mapping[str, Any]) -> bool:
    """Whether `metrics` hold all four numbers of the table."""
    return all(key in metrics for key in KEYS.values())


def _gap(gap: float, kind: str, image: float | None) -> str:
    """Learned minus random init under one protocol: points, and test images when the test size is known."""
    images = f" ({abs(gap) / image:.0f} test images)" if image else ""
    return f"{gap:+.2f} points {kind}{images}"


def comparison_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The 2x2 table of linear top-1 (%) and the sentences that read it; [] without all four numbers."""
    if not has_comparison(metrics):
        return []
    value = {cell: float(metrics[key]) for cell, key in KEYS.items()}
    test_images = metrics.get("eval_test_images")
    image = 100 / test_images if test_images else None  # the points one test image is worth
    where = f"{metrics.get('eval_dataset', 'test')} test split" + (f", {test_images} images" if test_images else "")
    lines = [f"linear top-1 on the {where}:",
             f"  {'':<12} {'raw':>8} {'standardised':>13}"]
    for row in ("learned", "random init"):
        lines.append(f"  {row:<12} {value[row, 'raw']:>7.2f}% {value[row, 'standardised']:>12.2f}%")
    raw = value["learned", "raw"] - value["random init", "raw"]
    std = value["learned", "standardised"] - value["random init", "standardised"]
    lines.append(f"Learned minus random init: {_gap(raw, 'raw', image)}, {_gap(std, 'standardised', image)}; "
                 "one seed, so a gap of a few test images may not repeat with another.")
    if raw > 0 and std < raw / 2:
        lines.append("Standardising the features closes most of the raw gap: the raw number alone overstates "
                     "what pretraining added.")
    if min(raw, std) <= 0:
        lines.append("Under at least one protocol, this run does not show that pretraining helped.")
    return lines
