"""Deep InfoMax's layers: M is the first block's map and y = backbone(x), from one forward pass; the
reference-code loss (concat discriminators, rolled negatives, global and prior terms) against a
hand-written re-computation (values and gradients); the "last"/dot/all options keep the old behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relssl.errors import ConfigError
from relssl.losses.infomax import DIMHeads
from relssl.methods.dim import DeepInfoMax, DIMConfig
from relssl.models import create_backbone
from relssl.train.config import build_config

# backbone name, options, input side, the module whose output is the first map, its channels
FIRST_MAPS = [
    ("conv4", {}, 32, lambda b: b.layer1.relu, 8),
    ("resnet8", {}, 32, lambda b: b.relu, 16),  # CifarResNet.relu is the stem's only
    ("resnet18", {}, 64, lambda b: b.relu, 64),  # torchvision: the stem's ReLU, before the max-pool
]


def _hand_first_map(name: str, backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first block's conv-BN-ReLU written out layer by layer (eval-mode BatchNorm)."""
    conv, bn = (backbone.layer1.conv, backbone.layer1.bn) if name == "conv4" else (backbone.conv1, backbone.bn1)
    z = F.conv2d(x, conv.weight, None, conv.stride, conv.padding)
    z = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return torch.clamp_min(z, 0.0)


def _randomise_bn(backbone: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval mode is not an identity."""
    g = torch.Generator().manual_seed(7)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name,options,side,module,channels", FIRST_MAPS)
def test_forward_with_local_returns_the_first_block_map_and_the_output(name, options, side, module, channels):
    torch.manual_seed(0)
    backbone = create_backbone(name, **options).eval()
    _randomise_bn(backbone)
    x = torch.randn(3, 3, side, side)
    seen = []
    handle = module(backbone).register_forward_hook(lambda mod, inp, out: seen.append(out.clone()))
    with torch.no_grad():
        y, m = backbone.forward_with_local(x, "first")
        handle.remove()
        expected_y = backbone(x)
        hand = _hand_first_map(name, backbone, x)
    assert len(seen) == 1  # the stem / first block ran once
    assert backbone.local_channels("first") == channels and m.shape == (3, channels, *hand.shape[-2:])
    assert m.shape[-1] == (side if name != "resnet18" else side // 2)  # before any pooling
    torch.testing.assert_close(m, seen[0], rtol=0, atol=0)
    torch.testing.assert_close(m, hand, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, expected_y, rtol=0, atol=0)
    y_last, last = backbone.forward_with_local(x, "last")
    torch.testing.assert_close(last, backbone.forward_map(x))
    torch.testing.assert_close(y_last, expected_y)
    assert backbone.local_channels("last") == backbone.feature_dim == last.shape[1]


def test_forward_with_local_is_one_pass_in_training_mode():
    backbone = create_backbone("resnet8").train()
    x = torch.randn(4, 3, 16, 16)
    y, m = backbone.forward_with_local(x, "first")
    tracked = [b.num_batches_tracked.item() for b in backbone.modules() if isinstance(b, nn.BatchNorm2d)]
    assert tracked == [1] * len(tracked)  # every BatchNorm saw exactly one batch
    (y.sum() + m.sum()).backward()
    assert all(p.grad is not None for p in backbone.parameters())
    with pytest.raises(ValueError, match="local layer"):
        backbone.forward_with_local(x, "middle")


def _capture_heads(method: DeepInfoMax) -> list[tuple[torch.Tensor, torch.Tensor]]:
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    method.heads.register_forward_pre_hook(lambda mod, args: calls.append((args[0].detach(), args[1].detach())))
    return calls


@pytest.mark.parametrize("name", ["conv4", "resnet8"])
def test_dim_hands_the_first_block_map_and_the_backbone_output_to_the_loss(name):
    torch.manual_seed(0)
    method = DeepInfoMax(create_backbone(name), DIMConfig(hidden_dim=16, global_channels=(4, 4))).eval()
    _randomise_bn(method.backbone)
    calls = _capture_heads(method)
    x = torch.randn(4, 3, 32, 32)
    out = method.training_step(x, torch.zeros(4), torch.arange(4))
    y, m = calls[0]
    with torch.no_grad():
        torch.testing.assert_close(y, method.backbone(x), rtol=0, atol=0)
        torch.testing.assert_close(m, _hand_first_map(name, method.backbone, x), rtol=1e-5, atol=1e-6)
    assert set(out.metrics) == {"local_mi", "global_mi", "prior"}


def test_local_term_alone_trains_the_whole_backbone():
    torch.manual_seed(0)
    method = DeepInfoMax(create_backbone("conv4"), DIMConfig(global_weight=0, prior_weight=0, hidden_dim=16))
    method.training_step(torch.randn(4, 3, 16, 16), torch.zeros(4), torch.arange(4)).loss.backward()
    grads = {n: p.grad for n, p in method.backbone.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), [n for n, g in grads.items() if g is None]


# --- the reference-code loss, written out with literal concatenation and a rolled batch ---------------


def _mlp_1x1(x: torch.Tensor, layers: list[nn.Linear]) -> torch.Tensor:
    """1x1 convolutions (weights of the Linear layers) with ReLUs between, on (B, C, h, w)."""
    for k, lin in enumerate(layers):
        x = F.conv2d(x, lin.weight.double()[:, :, None, None], lin.bias.double())
        x = F.relu(x) if k < len(layers) - 1 else x
    return x


def reference_terms(heads: DIMHeads, y: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> tuple:
    """(-I_local, -I_global, prior) as the reference code computes them, in float64."""
    b, _, h, w = m.shape
    m_prime = torch.cat([m[1:], m[0].unsqueeze(0)], dim=0)
    y_tiled = y[:, :, None, None].expand(-1, -1, h, w)
    loc = heads.local_discriminator
    local_layers = [loc.first, loc.head[1], loc.head[3]]
    t_pos = _mlp_1x1(torch.cat((m, y_tiled), dim=1), local_layers)
    t_neg = _mlp_1x1(torch.cat((m_prime, y_tiled), dim=1), local_layers)
    local = F.softplus(t_neg).mean() - (-F.softplus(-t_pos).mean())

    glob = heads.global_discriminator
    c0, c1 = glob.summary[0], glob.summary[2]

    def global_score(maps: torch.Tensor) -> torch.Tensor:
        z = F.conv2d(F.relu(F.conv2d(maps, c0.weight.double(), c0.bias.double())), c1.weight.double(), c1.bias.double())
        z = F.adaptive_avg_pool2d(z, 16).reshape(b, -1)
        z = torch.cat((y, z), dim=1)
        for k, lin in enumerate([glob.first, glob.head[1], glob.head[3]]):
            z = F.linear(z, lin.weight.double(), lin.bias.double())
            z = F.relu(z) if k < 2 else z
        return z

    global_ = F.softplus(global_score(m_prime)).mean() + F.softplus(-global_score(m)).mean()

    d = heads.prior_discriminator

    def prior_prob(z: torch.Tensor) -> torch.Tensor:
        for k, lin in enumerate([mod for mod in d if isinstance(mod, nn.Linear)]):
            z = F.linear(z, lin.weight.double(), lin.bias.double())
            z = F.relu(z) if k < 2 else z
        return torch.sigmoid(z)

    prior = -(torch.log(prior_prob(v)).mean() + torch.log(1.0 - prior_prob(y)).mean())
    return local, global_, prior


def test_reference_loss_matches_a_written_out_recomputation_values_and_gradients():
    torch.manual_seed(3)
    heads = DIMHeads(12, 5, prior_hidden=(20, 10), alpha=0.5, beta=1.0, gamma=0.1, discriminator="concat",
                     negatives="roll", concat_hidden=24, global_channels=(6, 4))
    y = torch.randn(6, 12, requires_grad=True)
    m = torch.randn(6, 5, 9, 7, requires_grad=True)
    v = torch.rand(6, 12)
    out = heads(y, m, prior_samples=v)
    out.loss.backward()

    y64, m64 = y.detach().double().requires_grad_(True), m.detach().double().requires_grad_(True)
    local, global_, prior = reference_terms(heads, y64, m64, v.double())
    assert out.local_mi.item() == pytest.approx(-local.item(), rel=1e-6)
    assert out.global_mi.item() == pytest.approx(-global_.item(), rel=1e-6)
    assert out.prior.item() == pytest.approx(prior.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((1.0 * local + 0.5 * global_ + 0.1 * prior).item(), rel=1e-6)
    # the encoder side sees the MI terms' gradient and the prior term's reversed (docs: deviations)
    (gy_mi, gm_mi) = torch.autograd.grad(1.0 * local + 0.5 * global_, (y64, m64), retain_graph=True)
    (gy_prior,) = torch.autograd.grad(0.1 * prior, y64)
    torch.testing.assert_close(y.grad.double(), gy_mi - gy_prior, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(m.grad.double(), gm_mi, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("discriminator", ["concat", "dot"])
def test_all_and_rolled_negatives_match_a_pair_loop(discriminator):
    torch.manual_seed(4)
    b, d, c = 4, 6, 3
    y, m = torch.randn(b, d), torch.randn(b, c, 2, 3)
    for negatives in ("roll", "all"):
        heads = DIMHeads(d, c, embed_dim=5, hidden_dim=7, gamma=0.0, discriminator=discriminator,
                         negatives=negatives, concat_hidden=8)

        def score(i: int, j: int, heads: DIMHeads = heads) -> np.ndarray:  # T(y_i, every position of M_j)
            if discriminator == "dot":
                g = heads.global_encoder(y[i:i + 1])[0]
                return torch.einsum("e,ehw->hw", g, heads.local_encoder(m[j:j + 1])[0]).detach().numpy().ravel()
            pair = torch.cat((m[j:j + 1], y[i:i + 1, :, None, None].expand(-1, -1, 2, 3)), dim=1)
            loc = heads.local_discriminator
            return _mlp_1x1(pair.double(), [loc.first, loc.head[1], loc.head[3]]).detach().numpy().ravel()

        pairs = [(i, (i + 1) % b) for i in range(b)] if negatives == "roll" else \
            [(i, j) for i in range(b) for j in range(b) if i != j]
        pos = np.concatenate([score(i, i) for i in range(b)])
        neg = np.concatenate([score(i, j) for i, j in pairs])
        expected = np.mean(-np.logaddexp(0, -pos)) - np.mean(np.logaddexp(0, neg))
        assert heads(y, m).local_mi.item() == pytest.approx(expected, rel=1e-5)


def test_last_layer_dot_all_keeps_the_previous_behaviour():
    """local_layer=last, dot, all negatives, no global term: y = mean of the last map, M = that map."""
    torch.manual_seed(0)
    cfg = DIMConfig(local_layer="last", discriminator="dot", negatives="all", global_weight=0.0)
    method = DeepInfoMax(create_backbone("conv4"), cfg).eval()
    x = torch.randn(5, 3, 16, 16)
    torch.manual_seed(11)
    out = method.training_step(x, torch.zeros(5), torch.arange(5))
    torch.manual_seed(11)
    v = torch.rand(5, 64)
    heads = method.heads
    with torch.no_grad():
        fmap = method.backbone.forward_map(x)
        y = fmap.mean(dim=(2, 3))
        g = heads.global_encoder(y).double().numpy()
        loc = heads.local_encoder(fmap).double().numpy()
        scores = np.einsum("ie,jehw->ijhw", g, loc).reshape(5, 5, -1)
        same = np.eye(5, dtype=bool)
        mi = np.mean(-np.logaddexp(0, -scores[same])) - np.mean(np.logaddexp(0, scores[~same]))
        real, fake = heads.prior_discriminator(v).double(), heads.prior_discriminator(y).double()
        prior = (F.softplus(-real).mean() + F.softplus(fake).mean()).item()
    assert out.metrics["local_mi"].item() == pytest.approx(mi, rel=1e-5)
    assert out.metrics["prior"].item() == pytest.approx(prior, rel=1e-5)
    assert out.metrics["global_mi"].item() == 0.0
    assert out.loss.item() == pytest.approx(-mi + 0.1 * prior, rel=1e-5)


class _PooledOnly(nn.Module):
    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_options_are_checked():
    with pytest.raises(ConfigError, match="forward_with_local"):
        DeepInfoMax(_PooledOnly())
    with pytest.raises(ConfigError, match="dim.negatives"):
        build_config({}, {"method": "dim", "dim.negatives": "all"})
    with pytest.raises(ConfigError, match="dim.local_layer"):
        build_config({}, {"method": "dim", "dim.local_layer": "middle"})
    cfg = build_config({}, {"method": "dim", "dim.negatives": "all", "dim.discriminator": "dot"})
    assert cfg.method_config.negatives == "all" and cfg.method_config.local_layer == "first"
    defaults = DIMConfig()
    assert (defaults.local_layer, defaults.discriminator, defaults.negatives) == ("first", "concat", "roll")
    assert (defaults.global_weight, defaults.local_weight, defaults.prior_weight) == (0.5, 1.0, 0.1)
    # the global discriminator's two unpadded 3x3 convs need a 5x5 map; Conv-4's last map at 16x16 is 2x2
    method = DeepInfoMax(create_backbone("conv4"), DIMConfig(local_layer="last", discriminator="dot",
                                                             negatives="all"))
    with pytest.raises(ConfigError, match="dim.global_weight"):
        method.training_step(torch.randn(2, 3, 16, 16), torch.zeros(2), torch.arange(2))
