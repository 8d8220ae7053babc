"""`relssl report`: a real digits run (plus monitor.csv, diagnostics.csv, retrieval.png) becomes one self-contained
HTML page with its charts, scores and escaped config; missing pieces are named; headless Chromium renders the charts."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.cli import main
from relssl.report import read_run, write_report
from relssl.report.charts import LOSS_COLOR, MONITOR_COLOR, smooth
from relssl.report.summary import evaluation_rows, other_metrics
from relssl.train.monitor import monitor_csv
from relssl.train.trainer import diagnostics_csv

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTILE = "# note: <script>alert('x')</script> & <b>bold</b>\n"  # must show as text, never as markup
MONITOR = [(1, 21, 31.25), (2, 42, 47.5), (3, 63, 58.75)]  # (epoch, step, knn_top1)
PICTURE_RGB = (13, 177, 201)  # the retrieval.png stand-in's colour


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@pytest.fixture
def full_run(digits_run: Path) -> Path:
    """The session's digits run with the files other settings and commands add: monitor.csv, diagnostics.csv,
    retrieval.png, and random-init scores."""
    monitor = [{"epoch": e, "step": s, "knn_top1": v} for e, s, v in MONITOR]
    (digits_run / "monitor.csv").write_text(monitor_csv(monitor))  # the trainer's own writers, so their formats
    diagnostics = [{"epoch": e, "step": s, "clusters_l1": 900.0 - 100 * e, "clusters_l2": 500.0 - 60 * e,
                    "largest_share_l1": 0.01 * e} for e, s, _ in MONITOR]
    (digits_run / "diagnostics.csv").write_text(diagnostics_csv(diagnostics))  # are the ones the report reads
    picture = np.zeros((60, 90, 3), np.uint8)
    picture[:, :] = PICTURE_RGB
    Image.fromarray(picture).save(digits_run / "retrieval.png")
    metrics = json.loads((digits_run / "metrics.json").read_text())  # the session's run skips the random init:
    metrics.update(random_init_linear_top1=9.87, random_init_linear_std_top1=41.5)  # its keys as compare_random writes
    (digits_run / "metrics.json").write_text(json.dumps(metrics))
    with (digits_run / "config.yaml").open("a") as fh:
        fh.write(HOSTILE)
    return digits_run


def _bare_run(source: Path, target: Path) -> Path:
    """A copy of `source` with only config.yaml and metrics.json: a run whose report has no chart and no picture."""
    target.mkdir()
    for name in ("config.yaml", "metrics.json"):
        shutil.copy(source / name, target / name)
    return target


def test_report_is_self_contained_with_charts_scores_and_escaped_config(full_run, capsys):
    assert main(["report", str(full_run)]) == 0
    path = full_run / "report.html"
    assert capsys.readouterr().out.strip() == f"report: {path}"
    page = path.read_text(encoding="utf-8")

    # nothing outside the file: no external src/href, stylesheet, script or CSS url()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"""<link|<script|<iframe|@import|url\(\s*["']?(?!#)""", page, re.I)  # url(#id): in-SVG
    # the charts: loss (with the smoothed line's colour), pair accuracy, monitor, diagnostics, as inline SVG
    assert page.count("<svg") == 4 and page.count("</svg>") == 4
    assert f"stroke: {LOSS_COLOR}" in page and f"stroke: {MONITOR_COLOR}" in page
    assert "<!DOCTYPE svg" not in page and "<?xml" not in page
    # the picture is the file's own bytes
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(e) for e in embedded] == [(full_run / "retrieval.png").read_bytes()]
    # the scores, learned beside random init, and the monitor's values
    metrics = json.loads((full_run / "metrics.json").read_text())
    for key in ("linear_top1", "random_init_linear_top1", "linear_std_top1", "random_init_linear_std_top1"):
        assert f">{metrics[key]:,.2f}</td>" in page
    for _, _, value in MONITOR:
        assert f">{value:,.2f}</td>" in page
    assert ">finished</td>" in page and ">relational</td>" in page and ">conv4</td>" in page
    # the config in full, escaped
    config = (full_run / "config.yaml").read_text()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>" not in page and "<b>bold" not in page
    assert "method: relational" in page and f"<pre>{html.escape(config)}</pre>" in page
    assert "tsne.png: not in this run" in page and "monitor.csv: not in this run" not in page


def test_missing_pieces_are_named_not_fatal(digits_run, tmp_path):
    bare = _bare_run(digits_run, tmp_path / "bare")
    page = write_report(bare, tmp_path / "out" / "page.html").read_text()
    assert "<svg" not in page and "data:image" not in page
    for name in ("train_log.csv", "monitor.csv", "retrieval.png", "tsne.png"):
        assert f"{name}: not in this run" in page
    assert "No loss curve" in page and "linear_top1" in page

    only_log = tmp_path / "only_log"
    only_log.mkdir()
    (only_log / "train_log.csv").write_text("step,epoch,elapsed_s,loss\n1,0,0.1,2.5\n2,0,0.2,2.25\n3,0,0.")  # cut short
    page = write_report(only_log).read_text()
    assert page.count("<svg") == 1 and "2 logged steps" in page
    assert "metrics.json: not in this run" in page and "config.yaml: not in this run" in page
    assert "unknown: no metrics.json yet" in page and "No evaluation results" in page


def test_stopped_run_monitor_from_metrics_and_unknown_keys(tmp_path):
    run = tmp_path / "stopped"
    run.mkdir()
    metrics = {"method": "rcl", "train_steps": 40, "finished": False, "knn_top1": 12.5, "retrieval_top10": 33.0,
               "random_init_retrieval_top10": 9.0, "mystery": [1, 2], "note": "a <tag>",
               "monitor": [{"epoch": 0, "step": 20, "knn_top1": 10.0}, {"epoch": 1, "step": 40, "knn_top1": 12.5}]}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "monitor.csv").write_text("epoch,step\n")  # the wrong columns: the metrics' list is used instead
    (run / "tsne.png").write_bytes(b"not a png")
    data = read_run(run)
    assert data.monitor == {"epoch": [0.0, 1.0], "step": [20.0, 40.0], "knn_top1": [10.0, 12.5]}
    page = write_report(run).read_text()
    assert "stopped before the end of the schedule" in page
    assert page.count("<svg") == 1  # the monitor
    assert "tsne.png: is not a PNG image" in page and "monitor.csv" not in page  # the list stood in for the file
    assert "a &lt;tag&gt;" in page and "[1, 2]" in page


def test_every_metrics_key_lands_in_one_table():
    metrics = {"method": "x", "finished": True, "linear_top1": 50.0, "random_init_linear_top1": 10.0,
               "random_init_knn_top1": 5.0, "linear_protocol": {"epochs": 1}, "monitor": [], "extra": 3}
    rows = evaluation_rows(metrics)
    assert [(r.key, r.learned, r.random_init) for r in rows] == [("linear_top1", 50.0, 10.0), ("knn_top1", None, 5.0)]
    assert other_metrics(metrics) == [("extra", "3")]


def test_smoothing_is_a_debiased_moving_average():
    assert smooth([4.0, 4.0, 4.0], span=10) == [4.0, 4.0, 4.0]  # no pull towards zero at the start
    beta = 0.5
    expected = [1.0, (beta * (1 - beta) * 1 + (1 - beta) * 3) / (1 - beta**2)]
    assert smooth([1.0, float("nan"), 3.0], span=2) == pytest.approx([expected[0], expected[0], expected[1]])


def test_a_folder_that_is_not_a_run_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for path, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "is not a run directory"),
                        (tmp_path / "file.txt", "is a file")):
        assert main(["report", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("relssl report: error: ") and words in err
    assert not (tmp_path / "empty" / "report.html").exists()


# --- rendering in a real browser --------------------------------------------------------------------------------


def _screenshot(html: Path, png: Path, profile: Path) -> np.ndarray:
    """Headless Chromium's 1200x2400 screenshot of `html`, as an (H, W, 3) uint8 array."""
    chromium = shutil.which("chromium")
    assert chromium is not None
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1200,2400",
               f"--screenshot={png}", html.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and png.is_file(), f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return np.asarray(Image.open(png).convert("RGB"))


def _near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    """Mask of the pixels within `tolerance` of `rgb` in every channel."""
    return (np.abs(image.astype(int) - np.array(rgb)) <= tolerance).all(axis=-1)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_chromium_with_its_charts(full_run, tmp_path):
    full = _screenshot(write_report(full_run), tmp_path / "full.png", tmp_path / "profile-full")
    bare_html = write_report(_bare_run(full_run, tmp_path / "bare"))
    bare = _screenshot(bare_html, tmp_path / "bare.png", tmp_path / "profile-bare")
    assert full.shape == bare.shape == (2400, 1200, 3)

    # not blank: many colours (about 2,200 here; a blank page has one or two), and a share of pixels neither the
    # page's background nor the cards' white (about 4 % here: text, rules, charts)
    colours = len(np.unique(full.reshape(-1, 3), axis=0))
    background = _near(full, (0xF4, 0xF5, 0xF7), 2) | _near(full, (255, 255, 255), 2)
    assert colours > 300 and (~background).mean() > 0.02, (colours, (~background).mean())
    assert len(np.unique(bare.reshape(-1, 3), axis=0)) > 20  # the chartless page still shows its text

    # the smoothed loss line: its colour, in the upper part of the page, drawn across the chart's width;
    # the same page without charts has none of it, so the colour comes from the chart alone
    loss = _near(full, _hex_rgb(LOSS_COLOR))
    assert _near(bare, _hex_rgb(LOSS_COLOR)).sum() < 20
    assert loss.sum() > 300, loss.sum()
    rows, cols = np.nonzero(loss)
    assert rows.min() > 100 and rows.max() < 1800  # below the title, above the config
    assert cols.max() - cols.min() > 400  # a line across the chart, not a stray pixel
    # the monitor's line, absent from the bare page
    assert _near(full, _hex_rgb(MONITOR_COLOR)).sum() > 100 and _near(bare, _hex_rgb(MONITOR_COLOR)).sum() < 20
