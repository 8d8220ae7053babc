"""The streaming reader: crops from full-size images as an independent reference computes them, a reproducible
and resumable order, unreadable files skipped and counted, the memory-map prefetch, and `relssl train/eval` end to end."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from relssl.cli import main
from relssl.data import load_listing
from relssl.data.stream import CropSettings, StreamLoader, crop_uniforms, eval_image
from relssl.errors import DataError, RelsslWarning
from relssl.train.batches import BatchStream

SIZE, VIEWS = 24, 3
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def make_photos(root: Path, per_class: int = 6) -> None:
    """Two classes of JPEGs of mixed sizes, plus a grayscale, a CMYK and a palette PNG image."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", 4)):
        for c, name in enumerate(("bright", "dark")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = (int(v) for v in rng.integers(40, 120, 2))
                pixels = rng.integers(0, 100, (h, w, 3), dtype=np.uint8) + (150 if c == 0 else 0)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg", quality=92)
    Image.fromarray(rng.integers(0, 255, (70, 50), dtype=np.uint8), "L").save(root / "train" / "dark" / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).convert("CMYK").save(
        root / "train" / "bright" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 50, 3), dtype=np.uint8)).convert("P").save(
        root / "train" / "bright" / "palette.png")


def reference_boxes(u: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """torchvision's RandomResizedCrop.get_params, written out, drawing from the given uniforms instead of its RNG."""
    boxes = []
    for row in u:
        for t in range(10):
            area = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * row[t])
            log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * row[10 + t])
            w, h = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = min(int(row[20] * (height - h + 1)), height - h)
                left = min(int(row[21] * (width - w + 1)), width - w)
                boxes.append((top, left, h, w))
                break
        else:
            ratio = width / height
            w, h = (width, int(round(width / min(RATIO)))) if ratio < min(RATIO) else \
                (int(round(height * max(RATIO))), height) if ratio > max(RATIO) else (width, height)
            boxes.append(((height - h) // 2, (width - w) // 2, h, w))
    return boxes


def reference_views(path: str, seed: int, epoch: int, index: int) -> np.ndarray:
    """The crops of one image computed independently: PIL decode, the boxes above, torchvision's resized_crop."""
    image = Image.open(path).convert("RGB")
    u = crop_uniforms(seed, epoch, index, VIEWS)
    return np.stack([np.asarray(TF.resized_crop(image, top, left, h, w, [SIZE, SIZE]))
                     for top, left, h, w in reference_boxes(u, image.height, image.width)])


def loader(root: Path, workers: int = 0, batch: int = 4, **kw) -> StreamLoader:
    listing = load_listing("imagefolder", "train", root)
    return StreamLoader(listing, CropSettings(size=SIZE, views=VIEWS, scale=SCALE, ratio=RATIO), batch, seed=7,
                        workers=workers, **kw)


def test_crops_match_an_independent_reference_for_every_image_mode(tmp_path: Path) -> None:
    make_photos(tmp_path)
    stream = loader(tmp_path)
    files = stream.listing.files
    assert any(f.endswith("gray.jpg") for f in files) and any(f.endswith("cmyk.jpg") for f in files)
    seen = set()
    for views, labels, indices in stream.iterate(epoch=1):
        m = len(indices)
        assert views.dtype == torch.uint8 and views.shape == (VIEWS * m, SIZE, SIZE, 3)
        for j, index in enumerate(indices.tolist()):
            expected = reference_views(files[index], seed=7, epoch=1, index=index)
            got = views.view(VIEWS, m, SIZE, SIZE, 3)[:, j].numpy()  # view-major: view v of image j
            np.testing.assert_array_equal(got, expected)
            assert labels[j] == stream.listing.labels[index]
            seen.add(index)
    assert len(seen) == stream.steps_per_epoch * 4  # every image of the epoch's full batches, once


def test_order_and_crops_do_not_depend_on_workers_and_resume_mid_epoch(tmp_path: Path) -> None:
    make_photos(tmp_path)
    one = list(loader(tmp_path, workers=0).iterate(epoch=2))
    two = list(loader(tmp_path, workers=2).iterate(epoch=2))
    resumed = list(loader(tmp_path, workers=2).iterate(epoch=2, start_step=2))
    assert len(one) == len(two) == len(resumed) + 2 >= 3
    for a, b in zip(one, two):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    for a, b in zip(one[2:], resumed):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    other_epoch = list(loader(tmp_path).iterate(epoch=3))
    assert not torch.equal(one[0][2], other_epoch[0][2])  # another epoch, another order
    # the same batches as the in-memory path draws
    images = np.zeros((len(loader(tmp_path).listing), 4, 4, 3), np.uint8)
    memory = BatchStream(images, np.zeros(len(images), np.int64), 4, seed=7)
    assert torch.equal(torch.stack([b[2] for b in one]), memory.epoch_indices(2))


def test_an_unreadable_file_is_skipped_counted_and_warned_about(tmp_path: Path) -> None:
    make_photos(tmp_path)
    (tmp_path / "train" / "dark" / "0.jpg").write_bytes(b"\xff\xd8\xff broken")
    stream = loader(tmp_path, workers=2)
    broken = stream.listing.files.index(str(tmp_path / "train" / "dark" / "0.jpg"))
    epoch = next(e for e in range(20) if broken in _requested(stream, e))
    with pytest.warns(RelsslWarning, match=r"skipped unreadable image .*dark/0.jpg"):
        batches = list(stream.iterate(epoch=epoch))
    used = torch.cat([b[2] for b in batches]).tolist()
    assert broken not in used and (broken + 1) % stream.num_images in used  # replaced by the next image
    assert stream.skipped == 1 and len(used) == len(_requested(stream, epoch))
    strict = loader(tmp_path, workers=2, strict=True)
    with pytest.raises(DataError, match=r"^cannot read image .*dark/0.jpg: .* drop data.strict"):
        list(strict.iterate(epoch=epoch))


def _requested(stream: StreamLoader, epoch: int) -> list[int]:
    from relssl.data.stream import epoch_batches

    return epoch_batches(stream.num_images, stream.batch_size, stream.seed, epoch).flatten().tolist()


def test_evaluation_crop_is_the_shorter_side_resize_then_the_centre(tmp_path: Path) -> None:
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8))
    crop = eval_image(image, 32, 36)
    expected = TF.center_crop(TF.resize(image, 36), [32, 32])  # torchvision's Resize(36) + CenterCrop(32)
    np.testing.assert_array_equal(crop, np.asarray(expected))


def test_memory_map_prefetch_gives_the_resident_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npy"
    np.save(path, rng.integers(0, 255, (50, 6, 6, 3), dtype=np.uint8))
    mapped = np.load(path, mmap_mode="r")
    labels = np.arange(50) % 5
    resident = BatchStream(mapped, labels, 8, seed=3, resident=True)
    streamed = BatchStream(mapped, labels, 8, seed=3, resident=False)
    for (a, b) in zip(resident.iterate(1, start_step=1), streamed.iterate(1, start_step=1), strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    iterator = streamed.iterate(2)
    next(iterator)
    iterator.close()  # stopping early lets the prefetch thread go


@pytest.mark.parametrize("method", ["simclr", "deepcluster"])
def test_train_and_eval_linear_on_a_streamed_folder(method: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "photos"
    make_photos(data, per_class=10)
    (data / "train" / "dark" / "3.jpg").write_bytes(b"not an image")
    runs = tmp_path / "runs"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RelsslWarning)
        code = main(["train", "--dataset", "imagefolder", "--data-root", str(data), "--set", "data.stream=true",
                     "--method", method, "--max-steps", "4", "--batch-size", "8", "--runs-dir", str(runs),
                     "--run-name", "r", "--no-progress", "--set", "augment.size=32", "--set", "eval.epochs=3",
                     "--set", "data.workers=1", "--set", "deepcluster.num_clusters=3", "--set", "deepcluster.pca_dim=8"])
    assert code == 0
    metrics = json.loads((runs / "r" / "metrics.json").read_text())
    assert metrics["finished"] is True and 0.0 <= metrics["linear_top1"] <= 100.0
    assert metrics["linear_unreadable_images"] == 1  # left out of the probe, and counted
    assert "data_skipped_images" in metrics
    assert "streamed (32x32 crops of the full-size files)" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RelsslWarning)
        assert main(["eval", "linear", "--checkpoint", str(runs / "r"), "--epochs", "3", "--no-progress",
                     "--output", str(out)]) == 0
    assert json.loads(out.read_text())["top1"] == pytest.approx(metrics["linear_top1"], abs=1e-6)


def test_streaming_needs_a_folder_of_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "digits", "--set", "data.stream=true", "--runs-dir", str(tmp_path)]) == 2
    assert "dataset 'digits' is not a folder of image files, so it cannot stream" in capsys.readouterr().err


def test_gpu_decoding_path_on_the_cpu_gives_the_same_images_and_nearly_the_same_crops(tmp_path: Path) -> None:
    """data.decode=gpu's logic (bytes from the workers, batched decode_jpeg, crops by interpolate), run on the
    CPU: the same images, labels and boxes as the CPU path, pixels within a few levels (another resampler)."""
    from relssl.data.gpu_decode import GpuDecodeLoader

    make_photos(tmp_path)
    (tmp_path / "train" / "dark" / "1.jpg").write_bytes(b"\xff\xd8\xff broken")
    listing = load_listing("imagefolder", "train", tmp_path)
    crops = CropSettings(size=SIZE, views=VIEWS, scale=SCALE, ratio=RATIO)
    cpu = StreamLoader(listing, crops, 4, seed=7, workers=0)
    gpu = GpuDecodeLoader(listing, crops, 4, seed=7, workers=2, allow_cpu=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RelsslWarning)
        for epoch in (0, 1):
            for a, b in zip(cpu.iterate(epoch), gpu.iterate(epoch), strict=True):
                assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
                assert a[0].shape == b[0].shape and b[0].dtype == torch.uint8
                assert (a[0].float() - b[0].float()).abs().mean() < 4.0
    assert gpu.skipped == cpu.skipped >= 1
    with pytest.raises(Exception, match="data.decode=gpu decodes JPEGs with torchvision on a CUDA device"):
        GpuDecodeLoader(listing, crops, 4)


def test_gpu_decoding_on_a_machine_without_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the error of a machine without GPUs")
    make_photos(tmp_path / "photos")
    code = main(["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "photos"), "--set",
                 "data.stream=true", "--set", "data.decode=gpu", "--runs-dir", str(tmp_path / "runs"),
                 "--no-progress", "--max-steps", "1", "--batch-size", "4"])
    assert code == 2
    assert "data.decode=gpu decodes JPEGs with torchvision on a CUDA device, but this run is on cpu" in \
        capsys.readouterr().err
    assert main(["train", "--set", "data.decode=gpu", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "add --set data.stream=true" in capsys.readouterr().err
