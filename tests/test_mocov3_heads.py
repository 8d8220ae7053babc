"""MoCo v3 equals a reference written here with the official ResNet layout (facebookresearch/moco-v3, moco/builder.py).

Official heads: every fc without bias; hidden layers fc-BN-ReLU; the last layer of the projector AND of
the predictor is fc-BN with a BN without affine parameters. Each view has its own forward pass on the
query and on the key branch; L = 2 tau (ctr(q1, k2) + ctr(q2, k1)), summed, not averaged. Loaded with
relssl's weights (strictly), loss and gradients must agree.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from relssl.methods.mocov3 import MoCoV3
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

M, HIDDEN, DIM, PRED, TAU = 8, 16, 8, 12, 0.5
TOL = 1e-6


def _mocov3(**overrides) -> MoCoV3:
    cfg = build_config({}, {"method": "mocov3", "mocov3.projector_hidden": [HIDDEN], "mocov3.projector_dim": DIM,
                            "mocov3.predictor_hidden": PRED, "mocov3.temperature": TAU, "mocov3.momentum": 0.9,
                            **overrides})
    torch.manual_seed(0)
    method = build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)
    assert isinstance(method, MoCoV3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-default BN scales and shifts, online and target alike
        for bn in method.modules():
            if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d) and bn.affine:
                bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g))
                bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=g))
    return method


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    """The official `_build_mlp(2, d_in, hidden, d_out)`."""
    return nn.Sequential(nn.Linear(d_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, d_out, bias=False), nn.BatchNorm1d(d_out, affine=False))


def _ctr(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    q, k = q / q.norm(dim=1, keepdim=True), k / k.norm(dim=1, keepdim=True)
    logits = q @ k.t() / TAU
    return nn.functional.cross_entropy(logits, torch.arange(len(q))) * (2 * TAU)


def test_loss_and_gradients_equal_the_official_layout() -> None:
    method = _mocov3().train()
    feat = method.backbone.feature_dim
    encoder = nn.Sequential(copy.deepcopy(method.backbone), _mlp(feat, HIDDEN, DIM))
    momentum_encoder = copy.deepcopy(encoder)
    predictor = _mlp(DIM, PRED, DIM)
    encoder[0].load_state_dict(method.backbone.state_dict(), strict=True)
    encoder[1].load_state_dict(method.projector.state_dict(), strict=True)
    predictor.load_state_dict(method.predictor.state_dict(), strict=True)
    assert method.target is not None
    momentum_encoder.load_state_dict(method.target.target.state_dict(), strict=True)

    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(M, 3, 16, 16, generator=g)
    x2 = 1.5 * x1 + 0.5 + 0.3 * torch.randn(M, 3, 16, 16, generator=g)
    out = method.training_step(torch.cat([x1, x2]), torch.full((M,), -1), torch.arange(M))
    out.loss.backward()

    q1, q2 = predictor(encoder(x1)), predictor(encoder(x2))
    with torch.no_grad():
        k1, k2 = momentum_encoder(x1), momentum_encoder(x2)
    expected = _ctr(q1, k2) + _ctr(q2, k1)
    expected.backward()
    assert abs(out.loss.item() - expected.item()) < TOL
    # the "/2" would halve it: the check can tell
    assert abs(out.loss.item() - expected.item() / 2) > 0.1

    pairs = [(method.backbone, encoder[0]), (method.projector, encoder[1]), (method.predictor, predictor)]
    for mine, ref in pairs:
        for (name, a), (_, b) in zip(mine.named_parameters(), ref.named_parameters()):
            assert b.grad is not None and b.grad.abs().max() > 0, name
            torch.testing.assert_close(a.grad, b.grad, rtol=TOL, atol=TOL, msg=name)
    # the key branch, too, saw each view on its own
    for (name, a), (_, b) in zip(method.target.target.named_buffers(), momentum_encoder.named_buffers()):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=name)


def test_projector_and_predictor_end_in_a_bn_without_affine() -> None:
    method = _mocov3()
    for head in (method.projector, method.predictor):
        bns = [m for m in head if isinstance(m, nn.BatchNorm1d)]
        assert head[-1] is bns[-1] and not bns[-1].affine and bns[-1].weight is None
        assert all(bn.affine for bn in bns[:-1]) and len(bns) == 2
        assert all(lin.bias is None for lin in head if isinstance(lin, nn.Linear))
    assert isinstance(method.target.target[1][-1], nn.BatchNorm1d) and not method.target.target[1][-1].affine


def test_options_restore_the_rcl_papers_predictor_and_affine_last_bns() -> None:
    method = _mocov3(**{"mocov3.predictor_last_bn": False, "mocov3.last_bn_affine": True})
    assert isinstance(method.predictor[-1], nn.Linear) and method.predictor[-1].bias is not None
    assert isinstance(method.projector[-1], nn.BatchNorm1d) and method.projector[-1].affine
