"""NNCLR's loss is Eq. 2 of Dwibedi et al. (2021), symmetrised over the views: values and gradients against
an independent NumPy version, through `nnclr_loss` and through the NNCLR method with a filled queue."""

import numpy as np
import pytest
import torch

from relssl.errors import ConfigError
from relssl.methods.nnclr import NNCLR, NNCLRConfig, nnclr_loss
from relssl.models import create_backbone
from relssl.train import build_method
from relssl.train.config import build_config

# ----------------------------------------------------------------------------- NumPy reference


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ce(anchors: np.ndarray, candidates: np.ndarray, tau: float) -> tuple[float, np.ndarray, np.ndarray]:
    """mean_i -log softmax_k(a_i . c_k / tau)[i] on unit rows, with its gradients w.r.t. the unit a and c."""
    b = len(anchors)
    s = anchors @ candidates.T / tau
    loss = float(np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(s)]))
    d = (_softmax(s) - np.eye(b)) / (b * tau)  # dL/ds
    return loss, d @ candidates, d.T @ anchors


def _through_normalise(raw: np.ndarray, grad_unit: np.ndarray) -> np.ndarray:
    """Chain rule through u = x / |x|: dL/dx = (grad - u (u . grad)) / |x|."""
    norm = np.linalg.norm(raw, axis=1, keepdims=True)
    u = raw / norm
    return (grad_unit - u * (u * grad_unit).sum(1, keepdims=True)) / norm


def numpy_nnclr(p1, p2, nn1, nn2, tau, softmax_over="predictions"):
    """Symmetrised loss and its gradients w.r.t. the raw predictions p1, p2 (float64).

    Eq. 2: L_i = -log exp(NN(z_i) . p_i^+ / tau) / sum_k exp(NN(z_i) . p_k^+ / tau), NN from view 1 and
    p^+ from view 2, plus the same with the views swapped, averaged. `neighbours` swaps the roles of
    anchor and candidates; `both` averages the two forms.
    """
    u1, u2, a1, a2 = _unit(p1), _unit(p2), _unit(nn1), _unit(nn2)
    total, g1, g2 = 0.0, np.zeros_like(p1), np.zeros_like(p2)
    forms = {"predictions": ["predictions"], "neighbours": ["neighbours"], "both": ["predictions", "neighbours"]}
    weight = 0.5 / len(forms[softmax_over])
    for form in forms[softmax_over]:
        for a, u, g in ((a1, u2, g2), (a2, u1, g1)):
            if form == "predictions":
                loss, _, grad_u = _ce(a, u, tau)
            else:
                loss, grad_u, _ = _ce(u, a, tau)
            total += weight * loss
            g += weight * grad_u
    return total, _through_normalise(p1, g1), _through_normalise(p2, g2)


def _inputs(seed, b=6, d=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(b, d)) for _ in range(4)]


def test_numpy_reference_gradient_matches_its_own_finite_differences():
    p1, p2, nn1, nn2 = _inputs(0)
    _, g1, _ = numpy_nnclr(p1, p2, nn1, nn2, 0.3, "both")
    eps, fd = 1e-6, np.zeros_like(p1)
    for idx in np.ndindex(p1.shape):
        up, down = p1.copy(), p1.copy()
        up[idx] += eps
        down[idx] -= eps
        fd[idx] = (numpy_nnclr(up, p2, nn1, nn2, 0.3, "both")[0] - numpy_nnclr(down, p2, nn1, nn2, 0.3, "both")[0]) / (2 * eps)
    np.testing.assert_allclose(g1, fd, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- nnclr_loss


@pytest.mark.parametrize("softmax_over", ["predictions", "neighbours", "both"])
@pytest.mark.parametrize("seed,tau", [(1, 0.1), (2, 0.5), (3, 1.0)])
def test_loss_and_prediction_gradients_equal_the_numpy_reference(softmax_over, seed, tau):
    p1, p2, nn1, nn2 = _inputs(seed)
    ref, ref_g1, ref_g2 = numpy_nnclr(p1, p2, nn1, nn2, tau, softmax_over)
    t1, t2 = (torch.tensor(x, dtype=torch.float32, requires_grad=True) for x in (p1, p2))
    n1, n2 = (torch.tensor(x, dtype=torch.float32) for x in (nn1, nn2))
    got = nnclr_loss(t1, t2, n1, n2, tau, softmax_over)
    got.backward()
    assert got.item() == pytest.approx(ref, abs=1e-6)
    np.testing.assert_allclose(t1.grad.double().numpy(), ref_g1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(t2.grad.double().numpy(), ref_g2, rtol=0, atol=1e-6)


def test_the_forms_differ_so_the_comparison_sees_the_direction():
    p1, p2, nn1, nn2 = _inputs(4)
    values = {form: numpy_nnclr(p1, p2, nn1, nn2, 0.1, form)[0] for form in ("predictions", "neighbours")}
    assert abs(values["predictions"] - values["neighbours"]) > 1e-2
    t = [torch.tensor(x, dtype=torch.float32) for x in (p1, p2, nn1, nn2)]
    assert nnclr_loss(*t, 0.1).item() == pytest.approx(values["predictions"], abs=1e-6)  # the default is Eq. 2


def test_unknown_softmax_over_is_refused():
    t = torch.randn(3, 4)
    with pytest.raises(ValueError, match="softmax_over must be one of predictions, neighbours, both"):
        nnclr_loss(t, t, t, t, 0.1, "rows")


# ----------------------------------------------------------------------------- the method, queue filled

M = 8
SMALL = {"nnclr.projector_hidden": [16], "nnclr.projector_dim": 8, "nnclr.predictor_hidden": 12,
         "nnclr.queue_size": 20, "nnclr.temperature": 0.2}


def _method(**overrides) -> NNCLR:
    cfg = build_config({}, {"method": "nnclr", **SMALL, **overrides})
    torch.manual_seed(0)
    method = build_method(cfg, create_backbone("conv4"), num_images=40, num_classes=5)
    assert isinstance(method, NNCLR)
    return method


def _views(seed: int) -> torch.Tensor:
    return torch.randn(2 * M, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _step(method, seed):
    return method.training_step(_views(seed), torch.full((M,), -1), torch.arange(M) + 10 * seed)


@pytest.mark.parametrize("softmax_over", ["predictions", "both"])
def test_method_step_is_eq2_with_brute_force_neighbours_from_the_filled_queue(softmax_over):
    method = _method(**{"nnclr.softmax_over": softmax_over})
    for seed in (1, 2, 3):  # 24 embeddings into a queue of 20: full and wrapped around
        _step(method, seed)
    bank = method.queue.features().double().numpy().copy()
    assert len(bank) == 20
    captured: dict[int, torch.Tensor] = {}
    outputs: list[torch.Tensor] = []

    def grab(module, inputs, output):  # the predictor runs once per view: p1, then p2
        slot = len(outputs)
        outputs.append(output.detach().clone())
        output.register_hook(lambda g: captured.__setitem__(slot, g.clone()))

    handle = method.predictor.register_forward_hook(grab)
    views = _views(4)
    out = method.training_step(views, torch.full((M,), -1), torch.arange(M) + 40)
    out.loss.backward()
    handle.remove()

    with torch.no_grad():  # train-mode BN depends on the batch only: the same z as inside the step
        z1, z2 = (method.project(v).double().numpy() for v in (views[:M], views[M:]))
    nearest = lambda z: bank[(_unit(z) @ bank.T).argmax(1)]  # noqa: E731
    p1, p2 = (t.double().numpy() for t in outputs)
    ref, ref_g1, ref_g2 = numpy_nnclr(p1, p2, nearest(z1), nearest(z2), 0.2, softmax_over)
    assert out.loss.item() == pytest.approx(ref, abs=1e-6)
    np.testing.assert_allclose(captured[0].double().numpy(), ref_g1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(captured[1].double().numpy(), ref_g2, rtol=0, atol=1e-6)
    # the neighbours came from other images (not z itself): the queue was used
    assert not np.allclose(nearest(z1), _unit(z1), atol=1e-3)


# ----------------------------------------------------------------------------- configuration


def test_softmax_over_defaults_and_the_queue_form():
    assert NNCLRConfig().softmax_over == "predictions"
    assert NNCLRConfig(negatives="queue").softmax_over == "neighbours"  # the RCL paper's form
    cfg = build_config({}, {"method": "nnclr", "nnclr.negatives": "queue"})
    assert cfg.method_config.softmax_over == "neighbours"


@pytest.mark.parametrize("overrides,match", [
    ({"nnclr.softmax_over": "rows"}, r"config key 'nnclr\.softmax_over'"),
    ({"nnclr.negatives": "queue", "nnclr.softmax_over": "predictions"},
     r"config key 'nnclr\.softmax_over'.*'neighbours' with nnclr\.negatives: queue"),
])
def test_bad_softmax_over_is_named_at_start_up(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config({}, {"method": "nnclr", **overrides})
