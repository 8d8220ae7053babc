"""SimSiam equals a reference written here with the official layout (Chen & He 2021; facebookresearch/simsiam).

The reference is plain torch: a copy of the backbone, a projector fc-BN-ReLU, fc-BN-ReLU, fc-BN with
bias-free fcs and a last BN without affine parameters, a predictor fc(no bias)-BN-ReLU-fc, one forward
pass per view and the symmetric negative cosine with a stop-gradient on z. Loaded with relssl's weights
(strictly, so any extra or missing parameter fails), loss, gradients and BatchNorm running statistics
must agree; a single concatenated forward of both views must not.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from relssl.methods.simsiam import SimSiam
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

M, HIDDEN, DIM, PRED = 8, 16, 8, 4
TOL = 1e-6


def _simsiam(**overrides) -> SimSiam:
    cfg = build_config({}, {"method": "simsiam", "simsiam.projector_hidden": [HIDDEN, HIDDEN],
                            "simsiam.projector_dim": DIM, "simsiam.predictor_hidden": PRED, **overrides})
    torch.manual_seed(0)
    method = build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)
    assert isinstance(method, SimSiam)
    _randomise_batchnorm(method)
    return method


def _randomise_batchnorm(module: nn.Module) -> None:
    """Non-default BN scales and shifts, so a layer that ignored them would show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d) and bn.affine:
                bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=g))
                bn.bias.copy_(0.3 * torch.randn(bn.bias.shape, generator=g))


class ReferenceSimSiam(nn.Module):
    """The official builder's layers, written out: encoder = backbone + 3-layer projector, 2-layer predictor."""

    def __init__(self, backbone: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, HIDDEN, bias=False), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN, bias=False), nn.BatchNorm1d(HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, DIM, bias=False), nn.BatchNorm1d(DIM, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(DIM, PRED, bias=False), nn.BatchNorm1d(PRED), nn.ReLU(), nn.Linear(PRED, DIM),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    @staticmethod
    def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    def loss_from(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return -(self._cos(p1, z2.detach()).mean() + self._cos(p2, z1.detach()).mean()) * 0.5

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The official forward: one encoder pass per view."""
        return self.loss_from(self.encode(x1), self.encode(x2))

    def concatenated(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """The control: both views in one batch, so BatchNorm mixes their statistics."""
        z1, z2 = self.encode(torch.cat([x1, x2])).chunk(2)
        return self.loss_from(z1, z2)


def _pair() -> tuple[SimSiam, ReferenceSimSiam]:
    method = _simsiam()
    ref = ReferenceSimSiam(copy.deepcopy(method.backbone), method.backbone.feature_dim)
    # strict: the reference has no affine in the last BN and no bias before a BN; relssl must match
    ref.projector.load_state_dict(method.projector.state_dict(), strict=True)
    ref.predictor.load_state_dict(method.predictor.state_dict(), strict=True)
    ref.backbone.load_state_dict(method.backbone.state_dict(), strict=True)
    return method.train(), ref.train()


def _views() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(M, 3, 16, 16, generator=g)
    # the second view differs in brightness and contrast, so its BatchNorm statistics differ from the first's
    return torch.cat([base, 1.7 * base + 0.8 + 0.2 * torch.randn(M, 3, 16, 16, generator=g)])


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.requires_grad and p.grad is not None}


def test_loss_and_gradients_equal_the_official_per_view_reference() -> None:
    method, ref = _pair()
    views = _views()
    out = method.training_step(views, torch.full((M,), -1), torch.arange(M))
    out.loss.backward()
    expected = ref(*views.chunk(2))
    expected.backward()
    assert abs(out.loss.item() - expected.item()) < TOL
    got, want = _grads(method), _grads(ref)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        assert want[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=TOL, atol=TOL, msg=name)
    # two forward passes update the running statistics twice, once per view, in both
    for (name, a), (_, b) in zip(method.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=name)


def test_a_single_concatenated_forward_gives_another_loss() -> None:
    """The control: the old one-batch forward differs, so the comparison above can fail."""
    method, ref = _pair()
    views = _views()
    with torch.no_grad():
        loss = method.training_step(views, torch.full((M,), -1), torch.arange(M)).loss.item()
        per_view, joint = ref(*views.chunk(2)).item(), ref.concatenated(*views.chunk(2)).item()
    assert abs(loss - per_view) < TOL
    assert abs(joint - per_view) > 1e-3


def test_projector_last_bn_has_no_affine_parameters_and_the_others_do() -> None:
    method = _simsiam()
    proj_bns = [m for m in method.projector if isinstance(m, nn.BatchNorm1d)]
    pred_bns = [m for m in method.predictor if isinstance(m, nn.BatchNorm1d)]
    assert len(proj_bns) == 3 and len(pred_bns) == 1
    assert method.projector[-1] is proj_bns[-1]
    assert not proj_bns[-1].affine and proj_bns[-1].weight is None and proj_bns[-1].bias is None
    assert all(bn.affine and bn.weight is not None and bn.bias is not None for bn in [*proj_bns[:-1], *pred_bns])
    # fcs before a BN carry no bias; the predictor's output fc does
    linears = [m for m in (*method.projector, *method.predictor) if isinstance(m, nn.Linear)]
    assert [lin.bias is not None for lin in linears] == [False, False, False, False, True]


def test_last_bn_affine_option_restores_a_learnable_last_bn() -> None:
    last = _simsiam(**{"simsiam.last_bn_affine": True}).projector[-1]
    assert isinstance(last, nn.BatchNorm1d) and last.affine and last.weight is not None


@pytest.mark.parametrize("seed", [0, 1])
def test_each_view_is_normalised_by_its_own_batch_statistics(seed: int) -> None:
    """With per-view BN, every z_v has mean 0 and variance 1 per dimension over its own batch."""
    method = _simsiam()
    views = _views() + seed
    with torch.no_grad():
        z1, z2 = method.project_each(views)
    for z in (z1, z2):
        torch.testing.assert_close(z.mean(0), torch.zeros(DIM), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(DIM), atol=1e-3, rtol=0)
