"""timm models as backbones: `timm:<name>` builds timm's model, trains, resumes, evaluates, and refuses clearly."""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from relssl.augment import AugmentConfig
from relssl.cli import main
from relssl.errors import ConfigError
from relssl.models import BackboneConfig, TimmBackbone, create_backbone
from relssl.models.momentum import MomentumCopy
from relssl.models.sync_bn import sync_batchnorm
from relssl.train import build_method
from relssl.train.artifacts import load_trained_backbone
from relssl.train.checkpoint import load_checkpoint
from relssl.train.config import build_config
from relssl.train.run import build_backbone
from relssl.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = "vit_tiny_patch16_224"
VIT_16PX = {"img_size": 16, "patch_size": 4}  # a 4x4 patch grid on 16x16 images
MODELS = [("resnet18", {}), (VIT, VIT_16PX)]


def _config(name, options, max_steps, method="relational", **more):
    overrides = {"method": method, "backbone.name": f"timm:{name}", "backbone.options": dict(options),
                 "data.image_size": 16, "train.batch_size": 8, "train.max_steps": max_steps,
                 "train.progress": False, "train.log_every": 1, "train.device": "cpu", **more}
    if method == "relational":
        overrides["relational.k"] = 2
    return build_config({}, overrides)


def _trainer(cfg, run_dir):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 32)
    run_dir.mkdir(parents=True, exist_ok=True)
    method = build_method(cfg, build_backbone(cfg), num_images=len(images), num_classes=3)
    return Trainer(cfg, method, images, labels, AugmentConfig(), torch.device("cpu"), run_dir)


def _losses(run_dir):
    rows = (run_dir / "train_log.csv").read_text().strip().splitlines()
    column = rows[0].split(",").index("loss")
    return [float(row.split(",")[column]) for row in rows[1:]]


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_backbone_is_timms_model_without_classifier(name, options):
    torch.manual_seed(0)
    backbone = BackboneConfig(name=f"timm:{name}", options=options).build()
    assert isinstance(backbone, TimmBackbone) and backbone.timm_name == name and backbone.timm_options == options
    reference = timm.create_model(name, pretrained=False, num_classes=0, **options)
    reference.load_state_dict(backbone.model.state_dict(), strict=True)  # timm's own keys under `model.`
    assert backbone.feature_dim == reference.num_features
    x = torch.randn(2, 3, 16, 16)
    backbone.eval(), reference.eval()
    with torch.no_grad():
        out = backbone(x)
        assert out.shape == (2, backbone.feature_dim)
        assert torch.equal(out, reference(x))


@pytest.mark.parametrize(("name", "options"), MODELS)
def test_relational_run_trains_a_few_steps(tmp_path, name, options):
    trainer = _trainer(_config(name, options, max_steps=2), tmp_path / "run")
    before = [p.detach().clone() for p in trainer.method.backbone.parameters()]
    trainer.fit()
    losses = _losses(tmp_path / "run")
    assert len(losses) == 2 and all(np.isfinite(losses))
    after = list(trainer.method.backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_momentum_copy_follows_a_vit(tmp_path):
    """BYOL's EMA target of a LayerNorm ViT: built by deepcopy, moved by the update, loss finite."""
    trainer = _trainer(_config(VIT, VIT_16PX, max_steps=2, method="byol"), tmp_path / "run")
    target = trainer.method.target
    assert isinstance(target, MomentumCopy) and isinstance(target.target[0], TimmBackbone)
    before = [p.detach().clone() for p in target.parameters()]
    trainer.fit()
    assert all(np.isfinite(_losses(tmp_path / "run")))
    after = list(target.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_sync_batchnorm_keeps_timm_norm_act_layers():
    """timm's fused BatchNorm + activation becomes SyncBatchNormAct (torch's converter would drop the act)."""
    method = torch.nn.Sequential(create_backbone("timm:mobilenetv3_small_050"))
    sync_batchnorm(method)
    kinds = {type(m).__name__ for m in method.modules() if "BatchNorm" in type(m).__name__}
    assert kinds == {"SyncBatchNormAct"}
    vit = torch.nn.Sequential(create_backbone(f"timm:{VIT}", **VIT_16PX))
    assert sync_batchnorm(vit) is vit and not any("BatchNorm" in type(m).__name__ for m in vit.modules())


def test_image_size_defaults_to_timms_and_fixed_sizes_are_enforced():
    cnn = build_config({}, {"backbone.name": "timm:resnet18"})
    assert cnn.data.image_size == 224  # timm's pretrained input_size
    assert build_config({}, {"backbone.name": "timm:resnet18", "data.image_size": 32}).data.image_size == 32
    vit = build_config({"backbone": {"name": f"timm:{VIT}", "options": {"img_size": 32, "patch_size": 4}}})
    assert vit.data.image_size == 32
    with pytest.raises(ConfigError, match=r"data\.image_size.*224x224.*backbone\.options\.img_size=32") as err:
        build_config({}, {"backbone.name": f"timm:{VIT}", "data.image_size": 32})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"augment\.size"):
        build_config({}, {"backbone.name": f"timm:{VIT}", "augment.size": 96})


def test_unknown_name_and_rejected_option_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet1888'; close names: resnet18") as err:
        build_config({}, {"backbone.name": "timm:resnet1888"})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"resnet18.*img_size") as err:
        build_config({}, {"backbone.name": "timm:resnet18", "backbone.options.img_size": 32})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="pretrained"):
        build_config({}, {"backbone.name": "timm:resnet18", "backbone.options.pretrained": True})
    with pytest.raises(ConfigError, match="unknown backbone 'timm'.*timm:<name>"):
        build_config({}, {"backbone.name": "timm"})


def test_cli_refuses_dim_and_unknown_names_before_any_work(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--method", "dim", "--backbone", "timm:resnet18", "--runs-dir", str(runs),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dim needs" in err and "timm:resnet18" in err
    assert main(["train", "--backbone", f"timm:{VIT}x", "--runs-dir", str(runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"close names: {VIT}" in err
    assert not runs.exists()


def test_checkpoint_resumes_and_evaluates(tmp_path, capsys):
    straight = _trainer(_config(VIT, VIT_16PX, max_steps=3), tmp_path / "straight")
    straight.fit()
    _trainer(_config(VIT, VIT_16PX, max_steps=2), tmp_path / "split").fit()
    resumed = _trainer(_config(VIT, VIT_16PX, max_steps=3), tmp_path / "split")
    resumed.load_state_dict(load_checkpoint(tmp_path / "split"))
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    backbone, config, _ = load_trained_backbone(tmp_path / "split")
    assert isinstance(backbone, TimmBackbone) and config["backbone"]["options"] == VIT_16PX
    trained = resumed.method.backbone.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in backbone.state_dict().items())
    result = tmp_path / "eval.json"
    assert main(["eval", "linear", "--checkpoint", str(tmp_path / "split"), "--epochs", "1", "--no-progress",
                 "--output", str(result)]) == 0
    assert 0.0 <= json.loads(result.read_text())["top1"] <= 100.0


def test_the_documented_commands_and_config_validate(capsys):
    """docs/BACKBONES.md's `relssl train` lines and YAML block build the configs they describe."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "BACKBONES.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", doc, flags=re.S)
    commands = [" ".join(line.split()) for _, block in blocks for line in block.replace("\\\n", " ").splitlines()
                if line.startswith("relssl train --")]
    assert len(commands) == 3
    for command in commands:
        assert main([*shlex.split(command)[1:], "--print-config"]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        assert printed["backbone"]["name"].startswith("timm:") and printed["data"]["image_size"] in (32, 224)
    (tree,) = [yaml.safe_load(block) for kind, block in blocks if kind == "yaml"]
    assert build_config(tree).data.image_size == tree["backbone"]["options"]["img_size"]


def test_run_directory_name_has_no_colon(tmp_path):
    from relssl.train.setup import create_run_dir

    run_dir = create_run_dir(build_config({}, {"backbone.name": "timm:resnet18", "train.runs_dir": str(tmp_path)}))
    assert run_dir.name.endswith("-timm-resnet18") and ":" not in run_dir.name
