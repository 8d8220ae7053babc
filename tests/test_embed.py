"""`relssl embed`: a folder of images becomes the backbone's own features, in a listed order, resumably."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import relssl
from relssl.cli import main
from relssl.data.resize import fit_image
from relssl.data.stream import eval_image
from relssl.errors import ConfigError, DataError, RelsslWarning
from relssl.export import embed, embed_folder, export_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
EXPECTED_ORDER = ["a.png", "b/c/d.jpg", "b/c/e.png", "b/f.PNG", "b/g.jpeg", "h/i.png", "odd.png"]


def _folder(root: Path) -> Path:
    """Nested PNGs and JPEGs of 32x32 (one of 40x50), a corrupt PNG, a hidden file and a text file."""
    rng = np.random.default_rng(0)
    for name in EXPECTED_ORDER:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        shape = (40, 50, 3) if name == "odd.png" else (32, 32, 3)
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels).save(path, "JPEG" if name.endswith(("jpg", "jpeg")) else "PNG")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    (root / ".hidden.png").write_bytes(b"skipped: hidden")
    (root / "notes.txt").write_text("not an image")
    return root


def _expected(run: Path, root: Path, names: list[str]) -> np.ndarray:
    """The backbone's own features of `names`, preprocessed as docs/EXPORT.md says ("fit" at 32x32, then normalised)."""
    backbone = relssl.load_backbone(run)
    rows = []
    for name in names:
        with Image.open(root / name) as image:
            image = image.convert("RGB")
            if image.size != (32, 32):
                image = fit_image(image, (32, 32))  # shorter side to 32 (bilinear), centre crop
            pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255
        rows.append((pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    with torch.no_grad():
        return backbone(torch.stack(rows)).numpy()


@pytest.fixture
def run(tmp_path, backbone_run) -> Path:
    return backbone_run(tmp_path / "run", {"name": "resnet8"}, overrides={"data.image_size": 32},
                        normalization=(list(MEAN), list(STD)))


def test_embeddings_are_the_backbones_features_in_listed_order(tmp_path, run, capsys):
    images = _folder(tmp_path / "images")
    out = tmp_path / "emb"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["embed", "--checkpoint", str(run), "--images", str(images), "--output", str(out),
                     "--batch-size", "3", "--no-progress", "--device", "cpu"]) == 0
    assert (out / "files.txt").read_text().splitlines() == EXPECTED_ORDER
    assert (out / "unreadable.txt").read_text().splitlines() == ["b/broken.png"]
    ours = [w for w in caught if issubclass(w.category, RelsslWarning)]
    assert len(ours) == 1 and "1 of 8 images could not be read" in str(ours[0].message)
    got = np.load(out / "embeddings.npy")
    assert got.dtype == np.float32 and got.shape == (7, 64)
    np.testing.assert_allclose(got, _expected(run, images, EXPECTED_ORDER), rtol=1e-5, atol=1e-5)
    assert "embedded 7 of 8 images" in capsys.readouterr().out
    assert not (out / ".embed").exists()


def test_exported_file_and_normalize_give_unit_rows_of_the_same_features(tmp_path, run):
    images = _folder(tmp_path / "images")
    exported = export_backbone(run, "safetensors", tmp_path / "b.safetensors").path
    embed_folder(exported, images, tmp_path / "emb", batch_size=4, normalize=True, progress=False)
    got = np.load(tmp_path / "emb" / "embeddings.npy")
    want = _expected(run, images, EXPECTED_ORDER)
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_an_interrupted_run_continues_to_the_same_result(tmp_path, run, monkeypatch):
    images = _folder(tmp_path / "images")
    embed_folder(run, images, tmp_path / "whole", batch_size=2, progress=False)
    real, calls = embed._embed_batch, []

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embed, "_embed_batch", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        embed_folder(run, images, tmp_path / "parts", batch_size=2, progress=False)
    assert not (tmp_path / "parts" / "embeddings.npy").exists()
    monkeypatch.setattr(embed, "_embed_batch", real)
    result = embed_folder(run, images, tmp_path / "parts", batch_size=2, progress=False)
    assert result.resumed_at == 4 and not result.already_done
    assert np.array_equal(np.load(tmp_path / "parts" / "embeddings.npy"), np.load(tmp_path / "whole" / "embeddings.npy"))
    for name in ("files.txt", "unreadable.txt"):
        assert (tmp_path / "parts" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_a_finished_run_is_not_redone_and_changed_inputs_are_refused(tmp_path, run, backbone_run, monkeypatch):
    images = _folder(tmp_path / "images")
    out = tmp_path / "emb"
    embed_folder(run, images, out, progress=False)
    monkeypatch.setattr(embed, "_embed_batch", lambda *a, **k: pytest.fail("a finished run was computed again"))
    again = embed_folder(run, images, out, progress=False)
    assert again.already_done and again.embedded == 7 and again.unreadable == ["b/broken.png"]

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "new.png")
    with pytest.raises(ConfigError, match="changed image folder.*--restart"):
        embed_folder(run, images, out, progress=False)
    other = backbone_run(tmp_path / "other", {"name": "resnet8"}, overrides={"data.image_size": 32}, seed=1,
                         normalization=(list(MEAN), list(STD)))
    with pytest.raises(ConfigError, match="another checkpoint"):
        embed_folder(other, images, out, progress=False)
    monkeypatch.undo()
    result = embed_folder(other, images, out, progress=False, restart=True)
    assert result.embedded == 8 and "new.png" in (out / "files.txt").read_text().splitlines()


def test_streamed_runs_embed_with_the_centre_crop(tmp_path, backbone_run):
    run = backbone_run(tmp_path / "run", {"name": "conv4"},
                       overrides={"data.stream": True, "augment.size": 24, "data.eval_resize": 28})
    images = _folder(tmp_path / "images")
    info = embed_folder(run, images, tmp_path / "emb", progress=False)
    assert info.embedded == 7
    backbone = relssl.load_backbone(run)
    crops = []
    for name in EXPECTED_ORDER:
        with Image.open(images / name) as image:
            crops.append(eval_image(image.convert("RGB"), 24, 28))  # shorter side to 28, centre 24x24
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        want = backbone(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "emb" / "embeddings.npy"), want, rtol=1e-5, atol=1e-5)


def test_folder_without_readable_images_is_a_one_line_error(tmp_path, run, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", "--checkpoint", str(run), "--images", str(tmp_path / "empty"), "--output",
                 str(tmp_path / "emb"), "--no-progress"]) == 2
    assert "no images found in" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="none of the 1 images"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embed_folder(run, tmp_path / "bad", tmp_path / "emb2", progress=False)


def test_a_trained_digits_run_embeds_at_its_native_size(tmp_path, digits_run):
    """data.image_size unset: the size (16x16) and mean/std come from the run's training split and checkpoint."""
    rng = np.random.default_rng(1)
    names = ["x/0.png", "x/1.png", "y.png", "z.png"]
    for name, shape in zip(names, [(16, 16, 3), (16, 16, 3), (20, 24, 3), (16, 16, 3)]):
        (tmp_path / "d" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "d" / name)
    result = embed_folder(digits_run, tmp_path / "d", tmp_path / "emb", batch_size=3, progress=False)
    assert result.embedded == 4 and (tmp_path / "emb" / "files.txt").read_text().splitlines() == names
    normalization = torch.load(digits_run / "last.pt", weights_only=True)["normalization"]
    mean, std = torch.tensor(normalization["mean"])[:, None, None], torch.tensor(normalization["std"])[:, None, None]
    rows = []
    for name in names:
        with Image.open(tmp_path / "d" / name) as image:
            pixels = np.asarray(fit_image(image.convert("RGB"), (16, 16)))
        rows.append((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean) / std)
    with torch.no_grad():
        want = relssl.load_backbone(digits_run)(torch.stack(rows)).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "emb" / "embeddings.npy"), want, rtol=1e-5, atol=1e-5)
