"""docs/TUTORIAL.md runs as written: every ```bash command, in order, then every ```python block.

The commands run in one bash process (so `export` and the working folder carry over, as in a
reader's shell) with HOME pointing at a temporary folder, where generated images stand at the paths
the tutorial's `export PHOTOS=...` / `export LABELLED=...` lines name. `$QUICK`, empty for a reader,
cuts each `relssl train` to a few steps on small images. One unreadable file is added to the photo
folder right before `relssl embed` (training, rightly, refuses one). Each command is preceded by a
marker, so a failure names the command and shows its output, and the markers counted show that
every command of the page ran. The outcomes are checked too: run directories, metrics, monitor,
report, exported files, embeddings, and the numbers the Python blocks print.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "TUTORIAL.md"
QUICK = "--max-steps 3 --set data.image_size=32"  # a few steps; the photos are 40x48, so resizing still happens
IMAGE_HW = (40, 48)
CLASSES = ("checks", "horizontal", "rings", "vertical")
BROKEN = "album/broken.jpg"
MARK = "@@tutorial-step"


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks of `text`, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def bash_commands(block: str) -> list[str]:
    """The commands of a bash block: comment and blank lines dropped, backslash continuations joined."""
    commands, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(pending + line)
        pending = ""
    assert not pending, f"a bash block ends in a continuation line: {pending!r}"
    return commands


def pattern(kind: int, rng: np.random.Generator) -> Image.Image:
    """A 40x48 RGB picture of one of four kinds (vertical or horizontal stripes, rings, checks), with noise."""
    y, x = np.mgrid[0 : IMAGE_HW[0], 0 : IMAGE_HW[1]] / IMAGE_HW[1]
    phase, freq = rng.uniform(0, 1), rng.uniform(2, 4)
    if kind == 0:
        grid = np.sign(np.sin(2 * np.pi * (freq * x + phase)) * np.sin(2 * np.pi * (freq * y + phase)))
    elif kind == 1:
        grid = np.sin(2 * np.pi * (freq * y + phase))
    elif kind == 2:
        cx, cy = rng.uniform(0.3, 0.7, 2)
        grid = np.cos(2 * np.pi * freq * np.hypot(x - cx, y - cy))
    else:
        grid = np.sin(2 * np.pi * (freq * x + phase))
    image = (0.5 + 0.4 * grid)[..., None] * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 0.03, (*IMAGE_HW, 3))
    return Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))


def make_photos(folder: Path, rng: np.random.Generator) -> list[str]:
    """48 unlabelled PNGs: 40 loose, 8 in an album sub-folder. Returns their paths relative to `folder`, sorted."""
    names = [f"IMG_{i:04d}.png" for i in range(40)] + [f"album/IMG_{i:04d}.png" for i in range(40, 48)]
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pattern(i % 4, rng).save(folder / name)
    return sorted(names)


def make_labelled(folder: Path, rng: np.random.Generator) -> None:
    """train/<class>/ with 10 PNGs and test/<class>/ with 4 for each of the four classes."""
    for split, count in (("train", 10), ("test", 4)):
        for kind, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for i in range(count):
                pattern(kind, rng).save(folder / split / name / f"{i}.png")


def exported_path(text: str, name: str, home: Path) -> Path:
    """Where the tutorial's `export NAME=...` line points, with ~ as `home`."""
    found = re.findall(rf"^export {name}=(\S+)", text, flags=re.M)
    assert len(found) == 1, f"docs/TUTORIAL.md should set {name} once with 'export {name}=...', found {found}"
    value = found[0]
    assert value.startswith("~/"), f"the test places {name} under HOME; it expects ~/..., found {value}"
    return home / value[2:]


def run_bash(commands: list[str], cwd: Path, env: dict[str, str], broken: Path) -> tuple[str, dict[str, str], Path]:
    """Run `commands` in one bash process; fail naming the first command that fails, with its output.

    Returns the output, and the shell's environment and folder at the end (where the Python blocks run).
    """
    state = cwd.parent / "shell-state"
    lines = ["set -eo pipefail"]
    for i, command in enumerate(commands):
        lines.append(f"printf '\\n{MARK} {i} %s\\n' \"$(date +%s.%N)\"")
        if command.startswith("relssl embed"):  # the test's own line: one unreadable file for embed to skip
            lines.append(f"printf 'not an image' > {shlex.quote(str(broken))}")
        lines.append(command)
    lines += [f"env -0 > {str(state) + '.env'!r}", f"pwd > {str(state) + '.pwd'!r}",
              f"printf '\\n{MARK} done %s\\n' \"$(date +%s.%N)\""]
    result = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=900)
    marks = re.findall(rf"^{MARK} (\d+|done) ([\d.]+)$", result.stdout, flags=re.M)
    started = [int(step) for step, _ in marks if step != "done"]
    if result.returncode != 0:
        last = started[-1] if started else None
        where = commands[last] if last is not None else "(before the first command)"
        output = re.split(rf"^{MARK} {last} .*$", result.stdout, flags=re.M)[-1] if last is not None else result.stdout
        pytest.fail(f"tutorial command failed (exit {result.returncode}):\n  {where}\noutput:\n{output[-6000:]}")
    assert started == list(range(len(commands))), "not every bash command of the tutorial ran"
    assert marks[-1][0] == "done"
    times = [float(when) for _, when in marks]
    for command, start, stop in zip(commands, times, times[1:]):  # shown by pytest -s, or -rP
        print(f"{stop - start:6.1f} s  {command}")
    entries = Path(str(state) + ".env").read_text().split("\0")
    shell_env = dict(entry.split("=", 1) for entry in entries if "=" in entry)
    return result.stdout, shell_env, Path(Path(str(state) + ".pwd").read_text().strip())


PYTHON_RUNNER = f"""
import json, sys
blocks = json.load(open(sys.argv[1]))
for i, source in enumerate(blocks):
    print("\\n{MARK} %d" % i, flush=True)
    exec(compile(source, "<docs/TUTORIAL.md python block %d>" % (i + 1), "exec"), {{"__name__": "__main__"}})
print("\\n{MARK} done", flush=True)
"""


def run_python(blocks: list[str], cwd: Path, env: dict[str, str]) -> list[str]:
    """Run each block with fresh globals, in order, in one subprocess (one import of torch); their outputs."""
    (cwd / "blocks.json").write_text(json.dumps(blocks))
    result = subprocess.run([sys.executable, "-c", PYTHON_RUNNER, "blocks.json"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    parts = re.split(rf"^{MARK} (\d+|done)$", result.stdout, flags=re.M)
    # parts: [before, "0", output 0, "1", output 1, ..., "done", after]
    started = [int(p) for p in parts[1::2] if p != "done"]
    outputs = parts[2::2]
    if result.returncode != 0:
        last = started[-1] if started else 0
        pytest.fail(f"tutorial python block {last + 1} failed (exit {result.returncode}):\n{blocks[last]}\n"
                    f"output:\n{outputs[last][-6000:] if started else result.stdout[-6000:]}")
    assert started == list(range(len(blocks))), "not every python block of the tutorial ran"
    return outputs[: len(blocks)]


def max_difference(output: str, label: str) -> float:
    """The number after '<label> ... max difference' in a block's output."""
    found = re.findall(rf"^{re.escape(label)}.*max difference (\S+)$", output, flags=re.M)
    assert len(found) == 1, f"expected one '{label} ... max difference X' line in:\n{output}"
    return float(found[0])


def test_tutorial_runs_as_written(tmp_path: Path) -> None:
    for extra in ("onnx", "onnxruntime", "tensorboard"):  # relssl[onnx,tensorboard], in relssl[dev]
        pytest.importorskip(extra, reason=f"the tutorial uses {extra}: pip install -e '.[dev]'")
    text = TUTORIAL.read_text()
    commands = [c for block in fenced_blocks(text, "bash") for c in bash_commands(block)]
    python_blocks = fenced_blocks(text, "python")
    assert len(commands) >= 10 and len(python_blocks) >= 4, "the tutorial lost its commands"
    assert sum(c.startswith("relssl train") for c in commands) == 2
    assert all(c.rstrip().endswith("$QUICK") for c in commands if c.startswith("relssl train")), \
        "every relssl train command of the tutorial should end with $QUICK"

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir(parents=True)
    photos, labelled = exported_path(text, "PHOTOS", home), exported_path(text, "LABELLED", home)
    rng = np.random.default_rng(0)
    names = make_photos(photos, rng)
    make_labelled(labelled, rng)

    env = {k: v for k, v in os.environ.items() if k not in ("PHOTOS", "LABELLED", "RUN", "QUICK")}
    env.update(HOME=str(home), QUICK=QUICK, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    fonts = Path.home() / ".cache" / "matplotlib"  # the real one: no font-cache rebuild in the fake HOME
    if "MPLCONFIGDIR" not in env and fonts.is_dir():
        env["MPLCONFIGDIR"] = str(fonts)
    bin_dir = tmp_path / "bin"  # `relssl` on the PATH is this interpreter's relssl
    bin_dir.mkdir()
    (bin_dir / "relssl").write_text(f'#!/bin/sh\nexec {sys.executable} -m relssl "$@"\n')
    (bin_dir / "relssl").chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    log, shell_env, shell_cwd = run_bash(commands, work, env, photos / BROKEN)
    assert shell_env["PHOTOS"] == str(photos) and shell_env["RUN"] == "runs/photos"

    # 1-2: the unlabelled photos run trained, skipped evaluation with its note, measured feature statistics
    run = work / "runs" / "photos"
    for name in ("config.yaml", "train_log.csv", "loss.png", "last.pt", "backbone.safetensors", "metrics.json"):
        assert (run / name).is_file(), f"{run / name} missing"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] and "linear_top1" not in metrics and metrics["eval_skipped"]
    stats = metrics["feature_stats"]
    assert stats["images"] == len(names) and stats["feature_dim"] == 512
    assert 1 <= stats["effective_rank"] <= 512 and stats["uniformity"] <= 0
    assert log.count("evaluation needs labels") == 1  # step 1's note; the run watched on $LABELLED has none
    # 3: linear evaluation of the photos backbone on the labelled folder; the run pretrained on the photos and
    # monitored and evaluated on the labelled folder (eval.root)
    assert re.search(r"^linear evaluation .*top-1 [\d.]+%$", log, flags=re.M)
    watched_run = work / "runs" / "watched"
    monitor = (watched_run / "monitor.csv").read_text().splitlines()
    assert monitor[0] == "epoch,step,knn_top1" and len(monitor) >= 2
    assert list((watched_run / "tensorboard").rglob("events.out.tfevents.*"))
    watched_metrics = json.loads((watched_run / "metrics.json").read_text())
    for key in ("linear_top1", "linear_std_top1", "random_init_linear_top1", "monitor"):
        assert key in watched_metrics, f"runs/watched/metrics.json lacks {key}"
    assert watched_metrics["eval_root"] == str(labelled) and "eval_skipped" not in watched_metrics
    assert watched_metrics["eval_test_images"] == 4 * len(CLASSES)  # the labelled test split, not the photos
    assert watched_metrics["feature_stats"]["images"] == len(names)
    # 4: the report
    report = (watched_run / "report.html").read_text()
    assert report.startswith("<!DOCTYPE html>") and report.count("<svg") >= 2  # the loss and monitor charts
    # 5: the exports
    from safetensors import safe_open

    meta = safe_open(str(work / "photos.safetensors"), "pt").metadata()
    assert meta["architecture"] == "resnet18" and meta["feature_dim"] == "512"
    assert json.loads(meta["image_size"]) == [32, 32]
    assert (work / "photos_resnet18.pth").stat().st_size > 1_000_000
    assert (work / "photos.onnx").stat().st_size > 1_000_000
    # 6: the embeddings: every readable image once, in sorted order; the broken file listed
    embeddings = np.load(work / "photos-emb" / "embeddings.npy")
    assert embeddings.dtype == np.float32 and embeddings.shape == (len(names), 512)
    assert np.isfinite(embeddings).all()
    assert (work / "photos-emb" / "files.txt").read_text().splitlines() == names
    assert (work / "photos-emb" / "unreadable.txt").read_text().split() == [BROKEN]

    # 7: the python blocks, and what they print
    outputs = run_python(python_blocks, shell_cwd, shell_env)  # "from the same shell and folder"
    joined = "\n".join(outputs)
    assert max_difference(joined, "relssl.load_backbone vs relssl embed") <= 1e-5
    assert max_difference(joined, "torchvision resnet18 vs relssl embed") <= 1e-5
    assert max_difference(joined, "timm resnet18 vs relssl") <= 1e-5
    assert max_difference(joined, "onnxruntime vs relssl") <= 1e-4
    assert re.search(r"^resnet18 512 features; input \(32, 32\)", joined, flags=re.M)
    found = re.search(r"^most similar to (\S+):\n((?:  \S+  \S+\n?){5})", joined, flags=re.M)
    assert found, f"no nearest-neighbour listing in:\n{joined}"
    assert found.group(1) == names[0]
    neighbours = [line.split()[1] for line in found.group(2).splitlines()]
    assert len(set(neighbours)) == 5 and set(neighbours) <= set(names) - {names[0]}
