"""The default `relssl train` ends with learned vs random init under the raw and the standardised probe."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from relssl.cli import main
from relssl.cli.learned_vs_random import KEYS, comparison_lines


def test_the_default_run_prints_and_stores_all_four_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--runs-dir", str(tmp_path), "--run-name", "demo", "--no-progress", "--device", "cpu",
                 "--set", "train.max_steps=10", "--set", "eval.epochs=3"])  # the digits preset, shortened
    out = capsys.readouterr().out
    assert code == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    for key in KEYS.values():
        assert 0 <= metrics[key] <= 100 and f"{metrics[key]:.2f}%" in out
    assert metrics["eval_test_images"] == 450
    assert "raw" in out and "standardised" in out and "Learned minus random init" in out
    assert metrics["feature_stats"]["images"] == 1347 and "random_init_feature_stats" in metrics


@pytest.mark.parametrize("learned_std, expect_doubt", [(94.44, True), (97.0, False)])
def test_the_sentence_claims_no_more_than_the_numbers(learned_std: float, expect_doubt: bool) -> None:
    metrics = {"linear_top1": 89.33, "linear_std_top1": learned_std, "random_init_linear_top1": 50.44,
               "random_init_linear_std_top1": 94.89, "eval_test_images": 450, "eval_dataset": "digits"}
    text = "\n".join(comparison_lines(metrics))
    assert "+38.89 points raw (175 test images)" in text
    assert ("does not show that pretraining helped" in text) == expect_doubt
    assert "closes most of the raw gap" in text
    assert comparison_lines({"linear_top1": 90.0}) == []


def test_one_measured_time_is_stated_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """README's first screen, `relssl train --help` and the preset's comment state the same measured time."""
    from importlib.resources import files

    pattern = re.compile(r"(\d+) s on 2 CPU cores \(dev machine\)")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    preset = (files("relssl") / "presets" / "digits_quick.yaml").read_text()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    times = [pattern.findall(text) for text in (readme[:1500], helptext, preset)]
    assert all(len(found) == 1 for found in times), times
    assert len({found[0] for found in times}) == 1, times
    assert "OMP_NUM_THREADS=1" in preset and "/usr/bin/time" in preset  # how to measure it again
