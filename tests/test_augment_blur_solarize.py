"""Gaussian blur and solarisation in ViewAugment (BYOL's recipe), against NumPy references; paper 1's recipe unchanged."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import relssl.augment.views as views_module
from relssl.augment import AugmentConfig, ViewAugment, ops
from relssl.augment.params import ViewParams, sample_view_params
from relssl.benchmark import load_grid, plan_cells
from relssl.cli import main
from relssl.errors import ConfigError, RelsslWarning
from relssl.train.config import build_config

GRIDS = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"
# Everything but blur and solarisation off: the views are the (normalised) input images.
PLAIN = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "gray_p": 0.0,
         "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, h, w, 3), generator=gen(seed), dtype=torch.uint8)


# --- independent references --------------------------------------------------------------------


def np_blur(image: np.ndarray, sigma: float, size: int) -> np.ndarray:
    """Direct 2-D convolution of (3, H, W) with a size x size Gaussian, mirror padding without edge repeat."""
    r = size // 2
    offsets = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma**2))
    g /= g.sum()
    padded = np.pad(image.astype(np.float64), ((0, 0), (r, r), (r, r)), mode="reflect")
    _, h, w = image.shape
    out = np.zeros(image.shape, dtype=np.float64)
    for dy in range(size):
        for dx in range(size):
            out += g[dy, dx] * padded[:, dy : dy + h, dx : dx + w]
    return out


def np_solarize(image: np.ndarray) -> np.ndarray:
    """BYOL's solarisation: x * 1{x < 0.5} + (1 - x) * 1{x >= 0.5}."""
    return np.where(image < 0.5, image, 1.0 - image)


# --- the ops -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 5, 7])
def test_blur_equals_direct_numpy_convolution(size: int) -> None:
    x = torch.rand(3, 3, 9, 13, generator=gen(1))  # not square, and sides that are not multiples of anything
    sigma = torch.tensor([0.4, 1.0, 2.0])
    out = ops.gaussian_blur(x, sigma, size)
    for n in range(3):
        np.testing.assert_allclose(out[n].numpy(), np_blur(x[n].numpy(), float(sigma[n]), size), atol=1e-5, rtol=0)


def test_blur_mask_leaves_other_samples_bit_identical() -> None:
    x = torch.rand(4, 3, 8, 8, generator=gen(2))
    mask = torch.tensor([True, False, True, False])
    out = ops.gaussian_blur_(x.clone(), torch.full((4,), 1.5), mask, 3)
    assert torch.equal(out[~mask], x[~mask])
    np.testing.assert_allclose(out[0].numpy(), np_blur(x[0].numpy(), 1.5, 3), atol=1e-5, rtol=0)
    assert (out[mask] - x[mask]).abs().max() > 0.05


def test_blur_kernel_size_is_the_nearest_odd_tenth_of_the_side() -> None:
    assert ops.blur_kernel_size(224, 0.1) == 23  # BYOL's 23x23 at 224
    assert ops.blur_kernel_size(32, 0.1) == 3  # CIFAR: 3.2 -> 3
    assert ops.blur_kernel_size(96, 0.1) == 9 and ops.blur_kernel_size(64, 0.1) == 7
    assert ops.blur_kernel_size(8, 0.1) == 3  # never below 3
    with pytest.raises(ValueError, match="blur kernel 5"):
        ops.gaussian_blur(torch.rand(1, 3, 2, 2), torch.ones(1), 5)


def test_solarize_equals_numpy_threshold() -> None:
    x = torch.rand(3, 3, 6, 6, generator=gen(3))
    x[0, 0, 0, :4] = torch.tensor([0.0, 0.5, 1.0, 0.49999])
    mask = torch.tensor([True, False, True])
    out = ops.solarize(x, mask)
    expected = np.where(mask.numpy()[:, None, None, None], np_solarize(x.numpy()), x.numpy())
    np.testing.assert_array_equal(out.numpy(), expected.astype(np.float32))
    assert out[0, 0, 0, :4].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.49999])


# --- the pipeline ------------------------------------------------------------------------------


@pytest.mark.parametrize("cropped", [False, True])
def test_views_are_blurred_then_solarised_with_the_view_size_kernel(cropped: bool) -> None:
    """Blur (kernel 3 = 10 % of 30, odd) then solarisation, on the in-memory and the streaming (cropped) path."""
    images = uint8_images(4, 30, 30)
    cfg = AugmentConfig(**PLAIN, blur_p=1.0, solarize_p=1.0, blur_sigma=(1.3, 1.3))
    out = ViewAugment(cfg)(images, 2, gen(), cropped=cropped)
    rows = images if cropped else images.repeat(2, 1, 1, 1)
    for n, image in enumerate(rows.permute(0, 3, 1, 2).numpy() / 255.0):
        np.testing.assert_allclose(out[n].numpy(), np_solarize(np_blur(image, 1.3, 3)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cropped", [False, True])
def test_application_rates_per_view_match_the_byol_recipe(cropped: bool) -> None:
    """Over 4,000 images per view, blur and solarisation rates are BYOL's (1.0, 0.1) and (0.0, 0.2) within 4 SE.

    Blur is detected on a checkerboard (sigma drawn from [1, 2] so that every blur shows), solarisation
    on a separate run with constant 0.75 images (solarised rows become 0.25).
    """
    b = 4000
    board = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 200).to(torch.uint8)
    checker = board[None, :, :, None].expand(b * (2 if cropped else 1), 4, 4, 3).contiguous()
    flat = torch.full_like(checker, 191)  # 0.749
    base = {**PLAIN, "recipe": "byol"}
    blur_cfg = AugmentConfig(**base, solarize_p=0.0, blur_sigma=(1.0, 2.0))
    sol_cfg = AugmentConfig(**base, blur_p=0.0)
    blurred = ViewAugment(blur_cfg)(checker, 2, gen(4), cropped=cropped)
    solarised = ViewAugment(sol_cfg)(flat, 2, gen(5), cropped=cropped)
    blurred_rows = (blurred - board / 255.0).abs().flatten(1).amax(1) > 1e-3
    solarised_rows = solarised.flatten(1).amax(1) < 0.5
    for hits, probs in ((blurred_rows, (1.0, 0.1)), (solarised_rows, (0.0, 0.2))):
        for view, p in enumerate(probs):
            rate = hits[view * b : (view + 1) * b].float().mean().item()
            se = math.sqrt(p * (1 - p) / b)
            assert abs(rate - p) <= 4 * se + 1e-12, (view, rate, p)


def test_per_view_probabilities_cycle_over_more_views() -> None:
    """K = 4 views with BYOL's two-entry lists: views 0 and 2 get view 1's probabilities, 1 and 3 view 2's."""
    b, k = 3000, 4
    p = sample_view_params(AugmentConfig(recipe="byol"), k * b, 8, 8, torch.device("cpu"), gen(6), views=k)
    blur = p.blur.view(k, b).float().mean(1)
    solarize = p.solarize.view(k, b).float().mean(1)
    for view in range(k):
        pb, ps = (1.0, 0.0) if view % 2 == 0 else (0.1, 0.2)
        assert abs(blur[view] - pb) <= 4 * math.sqrt(pb * (1 - pb) / b) + 1e-12
        assert abs(solarize[view] - ps) <= 4 * math.sqrt(ps * (1 - ps) / b) + 1e-12
    lo, hi = p.sigma.min().item(), p.sigma.max().item()
    assert 0.1 <= lo < 0.12 and 1.98 < hi <= 2.0  # U(0.1, 2.0)


# --- paper 1's recipe unchanged ----------------------------------------------------------------

# Computed with the code before blur and solarisation existed (commit cc2710f): per-view sums and
# linearly weighted sums of the output, and the generator's next uniform after the call.
HEAD = {
    "default_k3": (
        {}, 3, False,
        [90.072, 112.696, 29.5203, 67.7513, -976.8297, 118.4693, -680.1507, 577.6657, 656.7773, -272.1871,
         -1064.3808, 529.3343],
        [-72.5359, 56.8853, 16.7282, 47.6554, 36.5349, -16.9941, 28.2243, 21.1197, -8.5855, 49.4689, 42.688,
         80.1011],
        0.43285220861434937,
    ),
    "fixed_size12_k2": (
        {"jitter_order": "fixed", "size": 12}, 2, False,
        [46.6642, 58.3219, 13.3218, 40.6981, -543.4231, 67.592, -383.5382, 255.6596],
        [-42.159, 33.6373, 9.6247, 27.9209, 19.4495, -8.931, 15.118, 13.9624],
        0.7507110238075256,
    ),
    "cropped_k2": (
        {}, 2, True,
        [87.7573, 87.0413, 41.6594, 60.8136],
        [-22.6196, 42.7005, 22.7001, 47.0623],
        0.03257715702056885,
    ),
}


@pytest.mark.parametrize("name", sorted(HEAD))
@pytest.mark.parametrize("recipe", [{}, {"recipe": "paper1"}, {"blur_p": [0.0, 0.0], "solarize_p": 0.0}])
def test_paper1_recipe_reproduces_the_views_from_before_blur_existed(name: str, recipe: dict) -> None:
    fields, k, cropped, sums, weighted, next_uniform = HEAD[name]
    images = torch.randint(0, 256, (4, 16, 16, 3), generator=gen(1234), dtype=torch.uint8)
    g = gen(7)
    out = ViewAugment(AugmentConfig(**fields, **recipe))(images, k, g, cropped=cropped)
    rows = out.double().flatten(1)
    w = torch.linspace(-1, 1, rows.shape[1], dtype=torch.float64)
    np.testing.assert_allclose(rows.sum(1).numpy(), sums, atol=2e-3, rtol=0)
    np.testing.assert_allclose((rows * w).sum(1).numpy(), weighted, atol=2e-3, rtol=0)
    assert torch.rand(1, generator=g).item() == next_uniform  # the same number of draws, no more


def test_byol_draws_three_more_uniforms_per_view_after_paper1s() -> None:
    """BYOL (with paper 1's jitter strengths) shares every paper-1 parameter for a seed, then draws (blur, sigma, solarise)."""
    n, device = 10, torch.device("cpu")
    g1, g2 = gen(8), gen(8)
    p1 = sample_view_params(AugmentConfig(), n, 16, 16, device, g1, views=2)
    strengths = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}
    p2 = sample_view_params(AugmentConfig(recipe="byol", **strengths), n, 16, 16, device, g2, views=2)
    for field in ("boxes", "flip", "jitter", "factors", "order", "gray"):
        assert torch.equal(getattr(p1, field), getattr(p2, field)), field
    u = torch.rand(n, 3, generator=g1)
    assert torch.equal(p2.blur, u[:, 0] < torch.tensor([1.0] * 5 + [0.1] * 5))
    torch.testing.assert_close(p2.sigma, 0.1 + 1.9 * u[:, 1])
    assert torch.equal(p2.solarize, u[:, 2] < torch.tensor([0.0] * 5 + [0.2] * 5))
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


# --- configuration -----------------------------------------------------------------------------


def test_recipes_fill_unset_fields_and_explicit_values_win() -> None:
    byol = AugmentConfig(recipe="byol")
    assert (byol.brightness, byol.contrast, byol.saturation, byol.hue) == (0.4, 0.4, 0.2, 0.1)
    assert byol.blur_p == (1.0, 0.1) and byol.solarize_p == (0.0, 0.2)
    assert byol.blur_sigma == (0.1, 2.0) and byol.blur_kernel_fraction == 0.1
    assert (byol.jitter_p, byol.gray_p, byol.flip_p, byol.scale) == (0.8, 0.2, 0.5, (0.08, 1.0))
    paper1 = AugmentConfig()
    assert paper1.recipe == "paper1" and paper1.blur_p == (0.0,) and paper1.solarize_p == (0.0,)
    assert paper1.brightness == 0.8 and not paper1.blurs and not paper1.solarizes
    cfg = build_config({}, {"augment.recipe": "byol", "augment.blur_p": [0.5, 0.5], "augment.brightness": 0.8})
    assert cfg.augment.blur_p == (0.5, 0.5) and cfg.augment.brightness == 0.8 and cfg.augment.solarize_p == (0.0, 0.2)
    assert AugmentConfig.model_validate(byol.model_dump()) == byol  # a saved config reads back the same


@pytest.mark.parametrize(
    "field, value",
    [
        ("recipe", "simclr"), ("recipe", 1), ("blur_p", [1.5]), ("blur_p", []), ("blur_p", "x"),
        ("solarize_p", [0.0, -0.1]), ("solarize_p", float("nan")), ("blur_sigma", (0.0, 1.0)),
        ("blur_sigma", (2.0, 1.0)), ("blur_sigma", (0.5,)), ("blur_kernel_fraction", 0.0),
        ("blur_kernel_fraction", 1.5),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"augment\.{field}\b"):
        AugmentConfig(**{field: value})
    with pytest.raises(ConfigError, match=rf"augment\.{field}\b"):
        build_config({}, {f"augment.{field}": value})


def test_more_per_view_entries_than_views_is_an_error() -> None:
    cfg = AugmentConfig(blur_p=[1.0, 0.1, 0.5])
    cfg.check_views(3)
    with pytest.raises(ValueError, match=r"augment\.blur_p has 3 entries but the method makes 2 view"):
        ViewAugment(cfg)(uint8_images(2, 8, 8), 2, gen())
    with pytest.raises(ValueError, match=r"augment\.solarize_p has 2 entries .* 1 view"):
        ViewAugment(AugmentConfig(solarize_p=[0.0, 0.2]))(uint8_images(2, 8, 8), 1, gen())
    with pytest.raises(ValueError, match="k\\*B view-major crops"):
        ViewAugment()(uint8_images(3, 8, 8), 2, gen(), cropped=True)


PAPER2 = ["paper2_smoke_cifar10.yaml", "rcl_augment_removal.yaml", "semi_supervised_paper2.yaml",
          "rcl_ablations.yaml", "rcl_queue_size.yaml"]
PAPER1 = ["table1_smoke_cifar10.yaml", "table1_paper.yaml", "k_study.yaml", "depth_study.yaml", "semi_supervised.yaml"]


@pytest.mark.parametrize("name", PAPER2 + PAPER1)
def test_paper2_grids_pretrain_with_byols_recipe_and_paper1_grids_with_paper1s(name: str, tmp_path: Path) -> None:
    grid = load_grid(GRIDS / name, "smoke", {"RELSSL_CIFAR10": str(tmp_path)})
    try:
        planned = plan_cells(grid, tmp_path / "out")
    except Exception as err:  # a grid whose methods are still being written elsewhere
        pytest.skip(f"{name} does not plan yet: {err}")
    configs = {pc.cell.run_name: pc.config for pc in planned if pc.config is not None}
    assert configs
    recipe = "byol" if name in PAPER2 else "paper1"
    for run, cfg in configs.items():
        assert cfg.augment.recipe == recipe, run
        if name == "rcl_augment_removal.yaml" and "no-blur" in run:
            assert cfg.augment.blur_p == (0.0,) and cfg.augment.solarize_p == (0.0, 0.2), run
        elif name == "rcl_augment_removal.yaml" and "no-solarize" in run:
            assert cfg.augment.solarize_p == (0.0,) and cfg.augment.blur_p == (1.0, 0.1), run
        elif recipe == "byol":
            assert cfg.augment.blur_p == (1.0, 0.1) and cfg.augment.solarize_p == (0.0, 0.2), run


def test_streaming_training_blurs_and_solarises_the_workers_crops(
        tmp_path: Path, png: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    """`data.stream` + `augment.recipe=byol`: the trainer hands the workers' crops to ViewAugment(cropped=True),
    which blurs every view-1 row and solarises none of them."""
    for split, count in (("train", 6), ("test", 2)):
        for c, value in enumerate((40, 200)):
            for i in range(count):
                png(tmp_path / "photos" / split / f"c{c}" / f"{i}.png", (value, 255 - value, 90 + 20 * i), (40, 36))
    calls: list[tuple[str, torch.Tensor]] = []
    real_forward, real_blur, real_solarize = ViewAugment.forward, ops.gaussian_blur_, ops.solarize_

    def forward(self: ViewAugment, images: torch.Tensor, k: int, generator: torch.Generator | None = None,
                cropped: bool = False) -> torch.Tensor:
        calls.append(("cropped" if cropped else "uncropped", torch.tensor(images.shape[:3])))
        return real_forward(self, images, k, generator, cropped)

    def blur(x: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor, size: int) -> torch.Tensor:
        calls.append(("blur", mask.clone()))
        return real_blur(x, sigma, mask, size)

    def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        calls.append(("solarize", mask.clone()))
        return real_solarize(x, mask, threshold)

    drawn: list[ViewParams] = []

    def sample(*args: Any, **kwargs: Any) -> ViewParams:
        drawn.append(sample_view_params(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(views_module, "sample_view_params", sample)
    monkeypatch.setattr(ViewAugment, "forward", forward)
    monkeypatch.setattr(ops, "gaussian_blur_", blur)
    monkeypatch.setattr(ops, "solarize_", solarize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RelsslWarning)
        code = main(["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "photos"), "--method", "simclr",
                     "--set", "data.stream=true", "--set", "data.workers=0", "--set", "augment.recipe=byol",
                     "--set", "augment.size=32", "--max-steps", "2", "--batch-size", "4", "--set", "eval.epochs=1",
                     "--runs-dir", str(tmp_path / "runs"), "--run-name", "r", "--no-progress"])
    assert code == 0
    steps = [shape for kind, shape in calls if kind == "cropped"]
    assert len(steps) == 2 and all(shape.tolist() == [8, 32, 32] for shape in steps)  # 2 views x 4 crops of 32x32
    assert not [kind for kind, _ in calls if kind == "uncropped"]
    blurs = [mask for kind, mask in calls if kind == "blur"]
    solarises = [mask for kind, mask in calls if kind == "solarize"]
    assert len(blurs) == len(solarises) == len(drawn) == 2  # one chunk per step on these sizes
    for params, blur_mask, solarize_mask in zip(drawn, blurs, solarises):
        assert params.blur[:4].all() and not params.solarize[:4].any()  # view 1: blur 1.0, solarise 0
        # The ops see the rows regrouped by jitter order: the same flags, permuted.
        assert int(blur_mask.sum()) == int(params.blur.sum()) and int(solarize_mask.sum()) == int(params.solarize.sum())


def test_a_recipe_list_longer_than_the_views_applies_its_first_entries() -> None:
    """RotNet, DIM and the supervised bound make one view: the byol recipe's view 1 applies to it."""
    cfg = AugmentConfig(recipe="byol")
    cfg.check_views(1)  # exempt: the recipe's own lists
    views = ViewAugment(cfg)(uint8_images(64, 8, 8), 1, gen())
    assert views.shape == (64, 3, 8, 8)
    with pytest.raises(ValueError, match=r"augment\.blur_p has 2 entries"):
        AugmentConfig(recipe="byol", blur_p=[1.0, 0.5]).check_views(1)  # given explicitly: refused


def test_the_trainer_refuses_a_per_view_list_longer_than_the_views_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--method", "rotnet", "--epochs", "1", "--batch-size", "32", "--no-progress",
            "--runs-dir", str(tmp_path), "--set", "eval.linear=false", "--set", "augment.blur_p=[1.0,0.1]"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "augment.blur_p has 2 entries but the method makes 1 view(s)" in err
    assert not list(tmp_path.rglob("train_log.csv"))  # refused before the first step
