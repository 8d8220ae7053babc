"""Tests for relssl.models: backbone sizes and shapes, torchvision compatibility, heads, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from relssl.models import (
    BACKBONES,
    Backbone,
    Conv4,
    FeatureMapBackbone,
    ProjectionMLP,
    RelationHead,
    create_backbone,
)

BACKBONE_NAMES = BACKBONES.names()

# Parameter counts without a classifier. conv4 / CIFAR ResNets: the reference code's numbers;
# torchvision: resnetXX() total minus fc (513,000 / 513,000 / 2,049,000).
PARAM_COUNTS = {
    "conv4": 24_648,
    "resnet8": 77_392,
    "resnet32": 466_256,
    "resnet56": 855_120,
    "resnet18": 11_176_512,
    "resnet34": 21_284_672,
    "resnet50": 23_508_032,
}
FEATURE_DIMS = {
    "conv4": 64, "resnet8": 64, "resnet32": 64, "resnet56": 64, "resnet18": 512, "resnet34": 512, "resnet50": 2048
}
TORCHVISION = ("resnet18", "resnet34", "resnet50")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_names_and_options_agree() -> None:
    assert set(BACKBONE_NAMES) == set(PARAM_COUNTS)
    options = {name: dict(BACKBONES.get(name).options().model_dump()) for name in BACKBONE_NAMES}
    assert options["conv4"] == {"in_channels": 3, "pooling": "avg"}
    assert options["resnet32"] == {"in_channels": 3}
    assert options["resnet50"] == {"in_channels": 3, "cifar_stem": False, "zero_init_residual": False}


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_every_backbone_satisfies_the_protocol(name: str) -> None:
    model = create_backbone(name)
    assert isinstance(model, Backbone) and isinstance(model, FeatureMapBackbone)
    assert model.feature_dim == FEATURE_DIMS[name]


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_parameter_count_and_feature_dim(name: str) -> None:
    model = create_backbone(name)
    assert n_params(model) == PARAM_COUNTS[name]
    assert isinstance(model.feature_dim, int) and model.feature_dim == FEATURE_DIMS[name]
    assert not any("fc" in k for k in model.state_dict())


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_count_is_resnet_minus_fc(name: str) -> None:
    tv = getattr(torchvision.models, name)()
    assert n_params(tv) - n_params(tv.fc) == PARAM_COUNTS[name]


def test_conv4_count_breakdown() -> None:
    convs = 27 * 8 + 72 * 16 + 144 * 32 + 288 * 64  # 216 + 1152 + 4608 + 18432
    bn = 2 * (8 + 16 + 32 + 64)
    assert convs + bn == 24_648 == n_params(Conv4())


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_output_shape_32(name: str) -> None:
    model = create_backbone(name).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, FEATURE_DIMS[name]) and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["conv4", "resnet8"])
@pytest.mark.parametrize("size", [16, 17, 24, 40])
def test_small_backbones_any_size(name: str, size: int) -> None:
    model = create_backbone(name).eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 64)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_conv4_pooling(pooling: str) -> None:
    model = create_backbone("conv4", pooling=pooling)
    expected = nn.AvgPool2d if pooling == "avg" else nn.MaxPool2d
    assert all(isinstance(getattr(model, f"layer{i}").pool, expected) for i in (1, 2, 3))
    assert isinstance(model.layer4.pool, nn.AdaptiveAvgPool2d)
    assert n_params(model) == 24_648
    assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 64)


def test_conv4_default_is_reference_avgpool() -> None:
    assert isinstance(create_backbone("conv4").layer1.pool, nn.AvgPool2d)


def test_reference_init() -> None:
    torch.manual_seed(0)
    model = create_backbone("conv4")
    w = model.layer4.conv.weight
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (9 * 64)), rel=0.05)
    assert torch.all(model.layer4.bn.weight == 1) and torch.all(model.layer4.bn.bias == 0)


@pytest.mark.parametrize("name", ["resnet8", "resnet32"])
def test_cifar_resnet_layout(name: str) -> None:
    model = create_backbone(name)
    assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in model.modules())
    # exactly two shortcuts (stage 2 and 3 entry), each 1x1 conv + BN
    shortcuts = [m.downsample for m in model.modules() if getattr(m, "downsample", None) is not None]
    assert len(shortcuts) == 2
    for sc in shortcuts:
        assert sc[0].kernel_size == (1, 1) and sc[0].stride == (2, 2) and isinstance(sc[1], nn.BatchNorm2d)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_state_dict_compatibility(name: str) -> None:
    ours = create_backbone(name).eval()
    tv = getattr(torchvision.models, name)()
    result = tv.load_state_dict(ours.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    assert result.unexpected_keys == []
    tv.fc = nn.Identity()
    tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))
    # and the other way round: torchvision weights (minus fc) load strictly into ours
    state = {k: v for k, v in getattr(torchvision.models, name)().state_dict().items() if not k.startswith("fc.")}
    create_backbone(name).load_state_dict(state, strict=True)


def test_torchvision_same_seed_same_weights() -> None:
    torch.manual_seed(0)
    ours = create_backbone("resnet18").state_dict()
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().state_dict()
    for k, v in ours.items():
        torch.testing.assert_close(v, tv[k])


@pytest.mark.parametrize("name", TORCHVISION)
def test_cifar_stem(name: str) -> None:
    default = create_backbone(name)
    model = create_backbone(name, cifar_stem=True).eval()
    assert default.conv1.weight.shape == (64, 3, 7, 7) and isinstance(default.maxpool, nn.MaxPool2d)
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert n_params(model) == PARAM_COUNTS[name] - 64 * 3 * (49 - 9)
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, FEATURE_DIMS[name])
    # 32x32 keeps a 4x4 map before pooling instead of 1x1
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        h = model.layer4(model.layer3(model.layer2(model.layer1(h))))
    assert h.shape[-2:] == (4, 4)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_in_channels(name: str) -> None:
    model = create_backbone(name, in_channels=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, FEATURE_DIMS[name])


def test_in_channels_with_cifar_stem() -> None:
    model = create_backbone("resnet18", in_channels=4, cifar_stem=True)
    assert model.conv1.weight.shape == (64, 4, 3, 3)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    # different conv kernels sum in a different order: tolerance relative to the feature scale
    scale = ref.abs().max().item()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4 * max(scale, 1.0))


def test_channels_last_train_mode_backward() -> None:
    model = create_backbone("resnet8").to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert model.conv1.weight.grad is not None


def test_unknown_backbone() -> None:
    with pytest.raises(ValueError, match="vgg16") as info:
        create_backbone("vgg16")
    for name in BACKBONE_NAMES:
        assert name in str(info.value)


def test_unknown_option() -> None:
    with pytest.raises(ValueError, match="cifar_stem") as info:
        create_backbone("conv4", cifar_stem=True)
    assert "in_channels" in str(info.value) and "pooling" in str(info.value)
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("resnet18", num_classes=10)


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("conv4", {"pooling": "median"}, "pooling"),
        ("resnet8", {"in_channels": 0}, "in_channels"),
        ("resnet8", {"in_channels": 3.0}, "in_channels"),
        ("resnet34", {"cifar_stem": "yes"}, "cifar_stem"),
        ("resnet50", {"zero_init_residual": 1}, "zero_init_residual"),
    ],
)
def test_bad_option_values(name: str, options: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        create_backbone(name, **options)


def test_zero_init_residual() -> None:
    model = create_backbone("resnet50", zero_init_residual=True)
    assert torch.all(model.layer1[0].bn3.weight == 0)


# ----------------------------------------------------------------------------- heads


def test_relation_head_shape_and_structure() -> None:
    head = RelationHead(128)
    assert [type(m) for m in head.children()] == [nn.Linear, nn.BatchNorm1d, nn.LeakyReLU, nn.Linear]
    assert head.linear1.out_features == 256 and head.act.negative_slope == 0.01
    out = head(torch.randn(10, 128))
    assert out.shape == (10,)
    # reference relation_module keys load
    keys = {"linear1.weight", "linear1.bias", "bn1.weight", "bn1.running_mean", "linear2.weight"}
    assert set(head.state_dict()) >= keys


def test_relation_head_returns_logits_with_gradients() -> None:
    head = RelationHead(8, hidden=16, negative_slope=0.2)
    x = torch.randn(6, 8, requires_grad=True)
    logits = head(x)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0, 1, 0, 1, 0]))
    loss.backward()
    assert x.grad is not None and head.linear1.weight.grad is not None
    assert head.act.negative_slope == 0.2


def test_relation_head_batchnorm_train_vs_eval() -> None:
    torch.manual_seed(0)
    head = RelationHead(8, hidden=16)
    x = torch.randn(12, 8) * 3 + 1
    head.train()
    before = head.bn1.running_mean.clone()
    full = head(x)
    assert not torch.equal(head.bn1.running_mean, before)  # running stats updated in train mode
    # in train mode a pair's score depends on the other pairs (batch statistics)
    assert not torch.allclose(head(x[:6]), full[:6])
    with pytest.raises(ValueError):
        head(x[:1])  # BatchNorm cannot normalise a single pair in train mode
    head.eval()
    running = head.bn1.running_mean.clone()
    with torch.no_grad():
        torch.testing.assert_close(head(x[:6]), head(x)[:6])
        assert head(x[:1]).shape == (1,)
    assert torch.equal(head.bn1.running_mean, running)


def test_relation_head_bad_input() -> None:
    head = RelationHead(8)
    with pytest.raises(ValueError, match=r"\(P, 8\)"):
        head(torch.randn(4, 6))
    with pytest.raises(ValueError):
        RelationHead(0)


def test_relation_head_on_backbone_pairs() -> None:
    backbone = create_backbone("conv4").eval()
    feats = backbone(torch.randn(4, 3, 16, 16))
    pairs = torch.cat([feats, feats.roll(1, 0)], dim=1)
    assert RelationHead(2 * backbone.feature_dim)(pairs).shape == (4,)


def test_projection_mlp() -> None:
    mlp = ProjectionMLP(512, [2048, 2048], 256, last_bn=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in mlp) == 3
    assert sum(isinstance(m, nn.ReLU) for m in mlp) == 2
    assert isinstance(mlp[-1], nn.BatchNorm1d)
    assert mlp(torch.randn(5, 512)).shape == (5, 256)
    plain = ProjectionMLP(64, [64], 32, last_bn=False)
    assert isinstance(plain[-1], nn.Linear) and plain[-1].bias is not None
    assert plain(torch.randn(3, 64)).shape == (3, 32)
    linear_only = ProjectionMLP(64, [], 16, last_bn=False)
    assert len(linear_only) == 1
    moco = ProjectionMLP(8, [16], 4, last_bn=True, last_bn_affine=False)
    assert moco[-1].weight is None


@pytest.mark.parametrize("name", ["conv4", "resnet8", "resnet18"])
def test_forward_map_pools_to_the_features(name):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    x = torch.randn(2, 3, 64, 64)  # ResNet-18's ImageNet stem leaves 2x2 at 64x64
    fmap = backbone.forward_map(x)
    assert fmap.dim() == 4 and fmap.shape[1] == backbone.feature_dim and fmap.shape[2] > 1
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), backbone(x), rtol=1e-5, atol=1e-6)
