"""`relssl export` and `relssl.load_backbone`: every format loads where it promises and computes the same features."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

import relssl
from relssl.cli import main
from relssl.errors import ConfigError
from relssl.export import export_backbone, load_backbone_info

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"data.image_size": 32}  # the size is then known without reading the (digits) training data


def _batch(size: int = 32, n: int = 3, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _features(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module.eval()(x)


def test_safetensors_rebuilds_the_backbone_from_the_file_alone(tmp_path, backbone_run):
    run = backbone_run(tmp_path / "run", {"name": "resnet18", "cifar_stem": True}, overrides=SMALL)
    alone = tmp_path / "elsewhere" / "resnet18.safetensors"
    result = export_backbone(run, "safetensors", alone)
    assert sorted(p.name for p in alone.parent.iterdir()) == ["resnet18.safetensors"]  # no config.yaml beside it

    with safe_open(alone, framework="pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "relssl-backbone-v1" and meta["architecture"] == "resnet18"
    assert json.loads(meta["backbone"])["cifar_stem"] is True
    assert (meta["feature_dim"], meta["method"], meta["relssl_version"]) == ("512", "relational", relssl.__version__)
    assert json.loads(meta["mean"]) == [0.4, 0.5, 0.6] and json.loads(meta["std"]) == [0.2, 0.25, 0.3]
    assert json.loads(meta["image_size"]) == [32, 32] and meta["source"] == str(run.resolve())

    original, _ = load_backbone_info(run)
    loaded = relssl.load_backbone(alone)
    assert not loaded.training and loaded.feature_dim == 512
    assert loaded.relssl_info == result.info and loaded.relssl_info.mean == (0.4, 0.5, 0.6)
    x = _batch()
    assert torch.equal(_features(loaded, x), _features(original, x))
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in loaded.state_dict().items())  # BN statistics too


def test_run_directory_last_pt_and_backbone_safetensors_describe_the_same_backbone(tmp_path, backbone_run):
    run = backbone_run(tmp_path / "run", {"name": "conv4"}, overrides={"augment.size": 24, "data.image_size": 32})
    infos = [load_backbone_info(p)[1] for p in (run, run / "last.pt", run / "backbone.safetensors")]
    assert infos[0] == infos[1] == infos[2]
    assert infos[0].preprocess.size == (32, 32) and infos[0].image_size == (24, 24)


def test_torchvision_resnet18_loads_strictly_and_matches(tmp_path, backbone_run):
    import torchvision

    run = backbone_run(tmp_path / "run", {"name": "resnet18"}, overrides={"data.image_size": 64})
    out = tmp_path / "resnet18.pth"
    result = export_backbone(run, "torchvision", out)
    model = torchvision.models.resnet18()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = _batch(64)
    assert torch.allclose(_features(model, x), _features(relssl.load_backbone(run), x), atol=1e-6)
    assert "model.fc = torch.nn.Identity()" in result.recipe and "conv1" not in result.recipe


def test_torchvision_cifar_stem_follows_the_printed_recipe(tmp_path, backbone_run, capsys):
    run = backbone_run(tmp_path / "run", {"name": "resnet18", "cifar_stem": True}, overrides=SMALL)
    out = tmp_path / "cifar18.pth"
    assert main(["export", "--checkpoint", str(run), "--format", "torchvision", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    recipe = printed.split("load it with:\n", 1)[1]
    assert "kernel_size=3, stride=1, padding=1" in recipe and "model.maxpool = torch.nn.Identity()" in recipe
    scope: dict[str, object] = {}
    exec("\n".join(line.removeprefix("    ") for line in recipe.splitlines()), scope)  # the user's steps, as printed
    model = scope["model"]
    assert isinstance(model, nn.Module)
    x = _batch(32)
    assert torch.allclose(_features(model, x), _features(relssl.load_backbone(run), x), atol=1e-6)


@pytest.mark.parametrize("cifar_stem,size", [(False, 64), (True, 32)])
def test_timm_resnet18_loads_strictly_and_matches(tmp_path, backbone_run, cifar_stem, size):
    import timm

    run = backbone_run(tmp_path / "run", {"name": "resnet18", "cifar_stem": cifar_stem},
                       overrides={"data.image_size": size}, seed=3)
    out = tmp_path / "resnet18_timm.pth"
    export_backbone(run, "timm", out)
    model = timm.create_model("resnet18", num_classes=0)
    if cifar_stem:  # the two changes docs/EXPORT.md lists
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = _batch(size)
    assert torch.allclose(_features(model, x), _features(relssl.load_backbone(run), x), atol=1e-6)


def test_timm_backbone_exports_its_timm_state_dict(tmp_path, backbone_run):
    import timm

    run = backbone_run(tmp_path / "run", {"name": "timm:test_resnet"}, overrides=SMALL)
    out = tmp_path / "test_resnet.pth"
    result = export_backbone(run, "timm", out)
    state = torch.load(out, weights_only=True)
    assert not any(key.startswith("model.") for key in state)
    model = timm.create_model("test_resnet", num_classes=0)
    model.load_state_dict(state, strict=True)
    x = _batch(32)
    assert torch.allclose(_features(model, x), _features(relssl.load_backbone(run), x), atol=1e-6)
    assert 'timm.create_model("test_resnet", num_classes=0)' in result.recipe
    with pytest.raises(ConfigError, match="no torchvision counterpart"):
        export_backbone(run, "torchvision", tmp_path / "no.pth")


@pytest.mark.parametrize("backbone", [{"name": "conv4"}, {"name": "resnet8"}])
def test_onnx_matches_pytorch_under_onnxruntime(tmp_path, backbone_run, backbone):
    import onnx
    import onnxruntime

    run = backbone_run(tmp_path / "run", backbone, overrides=SMALL)
    out = tmp_path / "backbone.onnx"
    result = export_backbone(run, "onnx", out)
    assert result.check.startswith("onnxruntime vs PyTorch: max |diff|")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["mean"]) == [0.4, 0.5, 0.6] and props["architecture"] == backbone["name"]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # the batch axis is dynamic
        x = _batch(32, n, seed=n)
        got = session.run(["features"], {"images": x.numpy()})[0]
        want = _features(relssl.load_backbone(run), x).numpy()
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("backbone,fmt", [({"name": "conv4"}, "torchvision"), ({"name": "conv4"}, "timm"),
                                          ({"name": "resnet32"}, "torchvision"), ({"name": "resnet8"}, "timm")])
def test_backbones_without_a_counterpart_are_refused_in_one_line(tmp_path, backbone_run, capsys, backbone, fmt):
    run = backbone_run(tmp_path / "run", backbone, overrides=SMALL)
    out = tmp_path / "x.pth"
    assert main(["export", "--checkpoint", str(run), "--format", fmt, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"no {fmt} counterpart" in err and "--format safetensors or onnx" in err
    assert not out.exists()


def test_missing_onnx_extra_names_the_install_command(tmp_path, backbone_run, capsys, monkeypatch):
    run = backbone_run(tmp_path / "run", {"name": "conv4"}, overrides=SMALL)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["export", "--checkpoint", str(run), "--format", "onnx", "--output", str(tmp_path / "b.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "relssl export: error: --format onnx needs onnxruntime: pip install 'relssl[onnx]'"


def test_exported_file_with_bad_weights_is_a_one_line_error(tmp_path, backbone_run, capsys):
    run = backbone_run(tmp_path / "run", {"name": "conv4"}, overrides=SMALL)
    good = tmp_path / "b.safetensors"
    export_backbone(run, "safetensors", good)
    from safetensors.torch import load_file, save_file

    with safe_open(good, framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(good)
    tensors.pop("layer1.conv.weight")
    save_file(tensors, tmp_path / "cut.safetensors", metadata=meta)
    assert main(["export", "--checkpoint", str(tmp_path / "cut.safetensors"), "--format", "safetensors",
                 "--output", str(tmp_path / "again.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "weights do not fit conv4" in err and len(err.splitlines()) == 1


def test_bare_backbone_safetensors_measures_what_training_measured(tmp_path, digits_run):
    """An older, metadata-free backbone.safetensors + config.yaml without last.pt: mean/std are measured on the
    training split as training did."""
    from safetensors.torch import load_file, save_file

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_bytes((digits_run / "config.yaml").read_bytes())
    save_file(load_file(digits_run / "backbone.safetensors"), bare / "backbone.safetensors")  # as versions before 0.1
    _, measured = load_backbone_info(bare / "backbone.safetensors")
    _, recorded = load_backbone_info(digits_run)
    assert measured.preprocess == recorded.preprocess and recorded.image_size == (16, 16)
    assert recorded.mean == tuple(torch.load(digits_run / "last.pt", weights_only=True)["normalization"]["mean"])


def _metadata(path) -> dict[str, str]:
    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata() or {})


def _same_but_source(trained: dict[str, str], exported: dict[str, str]) -> None:
    """The trainer's metadata equals export's, entry for entry, except `source` (a copy of the run is elsewhere)."""
    assert trained.pop("source") and exported.pop("source")
    assert trained == exported


def test_a_runs_backbone_safetensors_records_what_export_records(tmp_path, digits_run):
    trained = _metadata(digits_run / "backbone.safetensors")
    assert trained["format"] == "relssl-backbone-v1" and trained["architecture"] == "conv4"
    exported = tmp_path / "exported.safetensors"
    export_backbone(digits_run, "safetensors", exported)  # from the run directory: config + last.pt
    _same_but_source(trained, _metadata(exported))
    assert json.loads(trained["preprocess"])["mode"] == "fit" and json.loads(trained["image_size"]) == [16, 16]


def test_a_runs_backbone_safetensors_loads_and_embeds_alone(tmp_path, digits_run, png):
    alone = tmp_path / "elsewhere" / "backbone.safetensors"
    alone.parent.mkdir()
    alone.write_bytes((digits_run / "backbone.safetensors").read_bytes())  # no config.yaml or last.pt beside it
    original, expected = load_backbone_info(digits_run)
    loaded = relssl.load_backbone(alone)
    info = loaded.relssl_info
    assert info.preprocess == expected.preprocess and (info.mean, info.std) == (expected.mean, expected.std)
    assert (info.architecture, info.backbone, info.feature_dim, info.method) == (
        expected.architecture, expected.backbone, expected.feature_dim, expected.method)
    x = _batch(size=16)
    assert torch.equal(_features(loaded, x), _features(original, x))

    for i in range(5):
        png(tmp_path / "photos" / f"{i}.png", (40 * i, 90, 200 - 30 * i), size=(20, 16))
    for source, out in ((alone, "from_file"), (digits_run, "from_run")):
        assert main(["embed", "--checkpoint", str(source), "--images", str(tmp_path / "photos"),
                     "--output", str(tmp_path / out), "--device", "cpu", "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "from_file" / "embeddings.npy"),
                          np.load(tmp_path / "from_run" / "embeddings.npy"))


def test_a_streamed_runs_backbone_safetensors_records_what_export_records(tmp_path, png):
    for i in range(12):
        png(tmp_path / "photos" / f"{i}.png", (20 * i, 100, 255 - 20 * i), size=(30, 24))
    assert main(["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "photos"), "--max-steps", "2",
                 "--k", "2", "--batch-size", "4", "--no-progress", "--device", "cpu", "--set", "data.stream=true",
                 "--set", "data.workers=0", "--set", "augment.size=16", "--set", "eval.linear=false",
                 "--runs-dir", str(tmp_path / "runs"), "--run-name", "r"]) == 0
    run = tmp_path / "runs" / "r"
    trained = _metadata(run / "backbone.safetensors")
    export_backbone(run, "safetensors", tmp_path / "exported.safetensors")
    assert trained["source"] == str(run.resolve())
    assert load_backbone_info(run / "backbone.safetensors")[1] == load_backbone_info(run)[1]  # source too
    _same_but_source(trained, _metadata(tmp_path / "exported.safetensors"))
    assert json.loads(trained["preprocess"]) == {**json.loads(trained["preprocess"]), "mode": "crop", "size": [16, 16],
                                                 "resize": 18}
