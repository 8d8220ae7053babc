"""Tests of relssl.augment: shapes and order, per-sample distributions, reproducibility, exactness of ops."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from relssl.augment import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, ViewAugment, ops, to_normalized
from relssl.augment.params import sample_crop_boxes, sample_view_params

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # output == augmented image in [0, 1]
NO_COLOR = dict(jitter_p=0.0, gray_p=0.0)
IDENTITY = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, **NO_COLOR)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(b: int = 4, h: int = 16, w: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=gen(seed))


def binomial_ok(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(hits / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- shape, order, layouts


def test_output_shape_dtype_and_view_major_order() -> None:
    b, k = 5, 3
    colours = torch.randint(0, 256, (b, 1, 1, 3), dtype=torch.uint8, generator=gen(1))
    images = colours.expand(b, 16, 16, 3).contiguous()  # each image one constant colour
    out = ViewAugment(AugmentConfig(**NO_COLOR, **RAW))(images, k, gen())
    assert out.shape == (k * b, 3, 16, 16) and out.dtype == torch.float32
    expected = colours.permute(0, 3, 1, 2).float() / 255  # (B, 3, 1, 1)
    for v in range(k):  # rows [v*B:(v+1)*B] are view v of images 0..B-1
        torch.testing.assert_close(out[v * b : (v + 1) * b], expected.expand(b, 3, 16, 16), atol=1e-5, rtol=0)


def test_size_option_resizes() -> None:
    out = ViewAugment(AugmentConfig(size=8))(random_images(h=20, w=24), 2, gen())
    assert out.shape == (8, 3, 8, 8)
    assert ViewAugment()(random_images(h=12, w=20), 2, gen()).shape == (8, 3, 12, 20)  # size=None keeps (H, W)


def test_channels_last_and_channels_first_inputs_agree() -> None:
    images = random_images()
    aug = ViewAugment()
    nhwc = aug(images, 4, gen(3))
    nchw = aug(images.permute(0, 3, 1, 2).contiguous(), 4, gen(3))
    assert torch.equal(nhwc, nchw)


def test_everything_disabled_equals_to_normalized() -> None:
    images = random_images()
    cfg = AugmentConfig(**IDENTITY)
    out = ViewAugment(cfg)(images, 3, gen())
    ref = to_normalized(images, *cfg.normalization())
    torch.testing.assert_close(out, ref.repeat(3, 1, 1, 1), atol=1e-5, rtol=0)


def test_to_normalized_matches_torchvision_and_resizes() -> None:
    images = random_images(b=2)
    mean, std = CIFAR10_MEAN, CIFAR10_STD  # ViewAugment's normalisation when the config leaves it unset
    ref = torch.stack([TF.normalize(TF.to_tensor(im.numpy()), mean, std) for im in images])
    torch.testing.assert_close(to_normalized(images, mean, std), ref, atol=1e-6, rtol=0)
    assert to_normalized(images, mean, std, size=8).shape == (2, 3, 8, 8)


def test_bad_inputs_raise() -> None:
    aug = ViewAugment()
    with pytest.raises(ValueError, match="k"):
        aug(random_images(), 0)
    with pytest.raises(ValueError, match="channels"):
        aug(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="4-D"):
        aug(torch.zeros(8, 8, 3, dtype=torch.uint8), 2)


# ---------------------------------------------------------------- randomness and reproducibility


def test_same_seed_same_views_different_seed_different() -> None:
    images, aug = random_images(), ViewAugment()
    assert torch.equal(aug(images, 4, gen(7)), aug(images, 4, gen(7)))
    assert not torch.equal(aug(images, 4, gen(7)), aug(images, 4, gen(8)))
    torch.manual_seed(5)
    a = aug(images, 4)
    torch.manual_seed(5)
    assert torch.equal(a, aug(images, 4))  # generator=None uses the global RNG


def test_views_of_one_image_differ() -> None:
    b, k = 4, 8
    out = ViewAugment()(random_images(b=b), k, gen()).view(k, b, -1)
    for i in range(b):
        dist = torch.cdist(out[:, i], out[:, i])
        assert (dist + torch.eye(k) > 1e-3).all(), f"two views of image {i} are identical"


def test_flip_rate() -> None:
    ramp = (torch.arange(16) * 16).to(torch.uint8).view(1, 1, 16, 1).expand(64, 16, 16, 3).contiguous()
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), **NO_COLOR, **RAW)
    out = ViewAugment(cfg)(ramp, 32, gen())
    flipped = out[:, 0, :, 0] > out[:, 0, :, -1]  # ramp decreasing left to right
    assert flipped.all(dim=1).eq(flipped.any(dim=1)).all()
    assert binomial_ok(int(flipped[:, 0].sum()), out.shape[0], 0.5)


def test_grayscale_rate() -> None:
    images = random_images(b=64, h=8, w=8)
    out = ViewAugment(AugmentConfig(jitter_p=0.0, **RAW))(images, 32, gen())
    gray = (out.amax(dim=1) - out.amin(dim=1)).flatten(1).amax(dim=1) < 1e-6
    assert binomial_ok(int(gray.sum()), out.shape[0], 0.2)
    # Grayscale is torchvision's luma, replicated in 3 channels.
    row = int(gray.nonzero()[0])
    plain = ViewAugment(AugmentConfig(jitter_p=0.0, gray_p=0.0, **RAW))(images, 32, gen())
    torch.testing.assert_close(out[row], TF.rgb_to_grayscale(plain[row], 3), atol=1e-6, rtol=0)


def test_jitter_rate_and_factor_range() -> None:
    grey = torch.full((64, 4, 4, 3), 100, dtype=torch.uint8)
    cfg = AugmentConfig(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.8, contrast=0.0, saturation=0.0,
                        hue=0.0, gray_p=0.0, **RAW)
    out = ViewAugment(cfg)(grey, 32, gen())
    factor = out[:, 0, 0, 0] / (100 / 255)
    changed = (factor - 1).abs() > 1e-5
    assert binomial_ok(int(changed.sum()), out.shape[0], 0.8)
    assert factor.min() >= 0.2 - 1e-5 and factor.max() <= 1.8 + 1e-5
    # uniform on [0.2, 1.8]: mean 1
    assert abs(factor[changed].mean().item() - 1.0) < 0.05


# ---------------------------------------------------------------- crops


def tv_crop_params(n: int, h: int, w: int, scale, ratio) -> torch.Tensor:
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    return torch.tensor([T.RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]).float()


@pytest.mark.parametrize("h, w", [(32, 32), (24, 40)])
def test_crop_sampler_matches_torchvision_distribution(h: int, w: int) -> None:
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    ours = sample_crop_boxes(torch.rand(20000, 22, generator=gen()), h, w, scale, ratio)
    ref = tv_crop_params(20000, h, w, scale, ratio)  # (top, left, height, width)
    for boxes in (ours, ref):
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= h).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()
    area, ref_area = ours[:, 2] * ours[:, 3] / (h * w), ref[:, 2] * ref[:, 3] / (h * w)
    # Rejection of boxes that do not fit pulls the mean below E[U(0.08, 1)] = 0.54 (to ~0.49 at 32x32).
    assert abs(area.mean() - ref_area.mean()) < 0.01
    if (h, w) == (32, 32):
        assert 0.47 < area.mean() < 0.51
    assert abs(area.std() - ref_area.std()) < 0.01
    for q in (0.1, 0.5, 0.9):
        assert abs(area.quantile(q) - ref_area.quantile(q)) < 0.02
    log_r, ref_log_r = (ours[:, 3] / ours[:, 2]).log(), (ref[:, 3] / ref[:, 2]).log()
    assert abs(log_r.mean() - ref_log_r.mean()) < 0.01
    # Aspect ratio within bounds up to integer rounding of the box sides.
    assert log_r.min() >= ref_log_r.min() - 1e-6 and log_r.max() <= ref_log_r.max() + 1e-6
    centre = ours[:, 1] + ours[:, 3] / 2
    assert abs(centre.mean() - w / 2) < 0.2  # offsets uniform over valid positions


def test_crop_sampler_fallback_is_torchvision_centre_crop() -> None:
    scale, ratio = (0.9, 1.0), (3.0, 4.0)  # never fits a square image: always the fallback
    ours = sample_crop_boxes(torch.rand(10, 22, generator=gen()), 30, 30, scale, ratio)
    ref = tv_crop_params(1, 30, 30, scale, ratio)
    assert torch.equal(ours, ref.expand(10, 4))


def test_crops_recovered_from_coordinate_image_match_sampled_boxes() -> None:
    """An image with R = 4x, G = 4y lets the box and flip of every view be read back."""
    s, b, k = 64, 16, 32
    coord = torch.arange(s) * 4
    img = torch.stack((coord.view(1, s).expand(s, s), coord.view(s, 1).expand(s, s), torch.zeros(s, s).long()), -1)
    images = img.to(torch.uint8).expand(b, s, s, 3).contiguous()
    cfg = AugmentConfig(**NO_COLOR, **RAW)
    out = ViewAugment(cfg)(images, k, gen(11)) * 255 / 4  # source pixel coordinates
    params = sample_view_params(cfg, k * b, s, s, torch.device("cpu"), gen(11))

    u1, u2 = s // 4, s - 1 - s // 4  # symmetric around the centre, away from border clamping
    x1, x2 = out[:, 0, s // 2, u1], out[:, 0, s // 2, u2]
    y1, y2 = out[:, 1, u1, s // 2], out[:, 1, u2, s // 2]
    width = (x2 - x1).abs() / (u2 - u1) * s
    height = (y2 - y1) / (u2 - u1) * s
    left = (x1 + x2) / 2 + 0.5 - width / 2
    top = (y1 + y2) / 2 + 0.5 - height / 2
    recovered = torch.stack((top, left, height, width), 1)
    torch.testing.assert_close(recovered, params.boxes, atol=1e-2, rtol=0)
    assert torch.equal(x2 < x1, params.flip)
    # And the sampled boxes follow the RandomResizedCrop distribution on this image size.
    ref = tv_crop_params(4000, s, s, cfg.scale, cfg.ratio)
    area = recovered[:, 2] * recovered[:, 3] / s**2
    assert abs(area.mean() - (ref[:, 2] * ref[:, 3] / s**2).mean()) < 0.03
    ratio = recovered[:, 3] / recovered[:, 2]
    assert ratio.min() > 0.75 * 0.95 and ratio.max() < 4 / 3 * 1.05


# ---------------------------------------------------------------- colour ops vs torchvision


def colour_batch() -> torch.Tensor:
    x = torch.rand(6, 3, 12, 12, generator=gen(2))
    x[0] = torch.randint(0, 256, (3, 12, 12), generator=gen(3)) / 255  # uint8-like values
    x[1, :, :4] = 0.5  # grey pixels (max == min)
    x[2] = (x[2] * 3).round() / 3  # many ties between channels
    x[3, 0] = x[3, 1]  # R == G everywhere
    return x


@pytest.mark.parametrize(
    "name, values",
    [
        ("brightness", [0.0, 0.2, 0.9, 1.0, 1.5, 1.8]),
        ("contrast", [0.0, 0.2, 0.9, 1.0, 1.5, 1.8]),
        ("saturation", [0.0, 0.2, 0.9, 1.0, 1.5, 1.8]),
        ("hue", [-0.5, -0.2, -0.01, 0.0, 0.13, 0.5]),
    ],
)
def test_color_ops_match_torchvision(name: str, values: list[float]) -> None:
    x = colour_batch()
    ours_fn, ref_fn = getattr(ops, f"adjust_{name}"), getattr(TF, f"adjust_{name}")
    for value in values:
        # Per-sample factors: every image gets its own value, compared with torchvision one by one.
        factors = torch.full((len(x),), value)
        per_sample = torch.tensor([values[(i + values.index(value)) % len(values)] for i in range(len(x))])
        for f in (factors, per_sample):
            ref = torch.stack([ref_fn(im, float(fi)) for im, fi in zip(x, f)])
            torch.testing.assert_close(ours_fn(x, f), ref, atol=1e-4, rtol=0)


def test_color_jitter_applies_each_samples_own_order() -> None:
    x = colour_batch().repeat(4, 1, 1, 1)
    n = x.shape[0]
    g = gen(4)
    factors = torch.stack(
        (torch.rand(n, generator=g) * 1.6 + 0.2, torch.rand(n, generator=g) * 1.6 + 0.2,
         torch.rand(n, generator=g) * 1.6 + 0.2, torch.rand(n, generator=g) * 0.4 - 0.2), 1
    )
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1)
    apply = torch.rand(n, generator=g) < 0.8
    ref_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    ref = x.clone()
    for i in range(n):
        if apply[i]:
            for op in order[i].tolist():
                ref[i] = ref_ops[op](ref[i], float(factors[i, op]))
    torch.testing.assert_close(ops.color_jitter(x, factors, order, apply), ref, atol=1e-4, rtol=0)


def test_fixed_jitter_order_config() -> None:
    params = sample_view_params(AugmentConfig(jitter_order="fixed"), 10, 8, 8, torch.device("cpu"), gen())
    assert torch.equal(params.order, torch.arange(4).expand(10, 4))
    params = sample_view_params(AugmentConfig(), 1000, 8, 8, torch.device("cpu"), gen())
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(4).expand(1000, 4))
    assert len({tuple(r) for r in params.order.tolist()}) == 24  # all permutations occur


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "field, value",
    [
        ("size", 0), ("size", 3.5), ("scale", (0.0, 1.0)), ("scale", (0.5, 0.2)), ("scale", (0.1, 1.5)),
        ("scale", (0.1,)), ("ratio", (0.0, 1.0)), ("ratio", (2.0, 1.0)), ("flip_p", 1.5), ("jitter_p", -0.1),
        ("gray_p", float("nan")), ("brightness", -0.1), ("contrast", "x"), ("saturation", -1), ("hue", 0.6),
        ("mean", (0.5, 0.5)), ("std", (0.2, 0.0, 0.2)), ("jitter_order", "sometimes"),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"augment\.{field}\b"):
        AugmentConfig(**{field: value})


def test_config_accepts_lists_and_stays_hashable() -> None:
    cfg = AugmentConfig(scale=[0.2, 1], mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert cfg.scale == (0.2, 1.0) and isinstance(cfg.mean, tuple)
    hash(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_cuda_generator() -> None:
    images = random_images().cuda()
    aug = ViewAugment()
    g = torch.Generator(device="cuda")
    out = aug(images, 4, g.manual_seed(0))
    assert out.device.type == "cuda" and out.shape == (16, 3, 16, 16)
    assert torch.equal(out, aug(images, 4, g.manual_seed(0)))
    ident = ViewAugment(AugmentConfig(**IDENTITY))(images, 2, g)
    ref = to_normalized(images.cpu(), CIFAR10_MEAN, CIFAR10_STD).repeat(2, 1, 1, 1)
    torch.testing.assert_close(ident.cpu(), ref, atol=1e-5, rtol=0)


def test_cpu_chunking_does_not_change_the_views(monkeypatch: pytest.MonkeyPatch) -> None:
    import relssl.augment.views as views_module

    images, aug = random_images(b=6), ViewAugment()
    whole = aug(images, 5, gen(9))  # 30 views of 3 KB: one chunk
    monkeypatch.setattr(views_module, "CPU_CHUNK_BYTES_PER_THREAD", 3 * 16 * 16 * 4 * 7)
    torch.testing.assert_close(aug(images, 5, gen(9)), whole, atol=1e-5, rtol=0)
    monkeypatch.setattr(views_module, "CPU_CHUNK_BYTES_PER_THREAD", 1)  # one view per chunk
    torch.testing.assert_close(aug(images, 5, gen(9)), whole, atol=1e-5, rtol=0)


def test_float_input_is_accepted_and_not_modified() -> None:
    images = random_images()
    as_float = images.float() / 255
    before = as_float.clone()
    cfg = AugmentConfig()
    torch.testing.assert_close(to_normalized(as_float, *cfg.normalization()), to_normalized(images, *cfg.normalization()))
    torch.testing.assert_close(ViewAugment(cfg)(as_float, 2, gen()), ViewAugment(cfg)(images, 2, gen()))
    assert torch.equal(as_float, before)
