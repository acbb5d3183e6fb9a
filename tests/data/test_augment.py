"""Tests for the batched SimCLR augmentation (SPEC.md §5): tiny tensors, known answers, references."""

from __future__ import annotations

import colorsys
import itertools

import numpy as np
import pytest
import torch

from simclrv2.data import augment as A
from simclrv2.data.augment import (
    AugmentConfig,
    BlurParams,
    ColorParams,
    center_crop,
    crop_flip,
    simclr_augment,
    to_float_rgb,
    two_view_batch,
    two_views,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uint8_images(n: int, channels: int = 3, size: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=gen(seed), dtype=torch.uint8)


# --- Reference implementations, one pixel or one image at a time ---


def ref_brightness(img: np.ndarray, value: float, mode: str) -> np.ndarray:
    return np.clip(img * value if mode == "v2" else img + value, 0, 1)


def ref_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    mean = img.mean(axis=(1, 2), keepdims=True)  # tf.image.adjust_contrast: per-channel mean
    return np.clip((img - mean) * factor + mean, 0, 1)


def _per_pixel_hsv(img: np.ndarray, fn) -> np.ndarray:
    out = np.empty_like(img)
    for i, j in itertools.product(range(img.shape[1]), range(img.shape[2])):
        h, s, v = colorsys.rgb_to_hsv(*img[:, i, j])
        out[:, i, j] = colorsys.hsv_to_rgb(*fn(h, s, v))
    return np.clip(out, 0, 1)


def ref_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    return _per_pixel_hsv(img, lambda h, s, v: (h, min(max(s * factor, 0.0), 1.0), v))


def ref_hue(img: np.ndarray, shift: float) -> np.ndarray:
    return _per_pixel_hsv(img, lambda h, s, v: ((h + shift) % 1.0, s, v))


def color_params(n: int, **overrides: torch.Tensor) -> ColorParams:
    """Identity colour parameters for n images, jitter on, no grayscale, then the overrides."""
    fields = {
        "apply": torch.ones(n, dtype=torch.bool),
        "order": torch.arange(4).repeat(n, 1),
        "brightness": torch.ones(n),
        "contrast": torch.ones(n),
        "saturation": torch.ones(n),
        "hue": torch.zeros(n),
        "grayscale": torch.zeros(n, dtype=torch.bool),
    }
    fields.update(overrides)
    return ColorParams(**fields)


# --- Shapes, dtypes, ranges ---


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("blur", [False, True])
def test_simclr_augment_shape_dtype_range(channels: int, dtype: torch.dtype, blur: bool) -> None:
    images = uint8_images(6, channels, size=28)
    if dtype != torch.uint8:
        images = images.to(dtype) / 255
    cfg = AugmentConfig(crop_size=20, blur=blur, color_strength=1.0)
    out = simclr_augment(images, cfg, gen())
    assert out.shape == (6, 3, 20, 20)
    assert out.dtype == torch.float32
    assert out.is_contiguous()
    assert out.min() >= 0 and out.max() <= 1
    a, b = two_views(images, cfg, gen())
    assert a.shape == b.shape == (6, 3, 20, 20)
    assert a.is_contiguous() and b.is_contiguous()
    assert min(a.min(), b.min()) >= 0 and max(a.max(), b.max()) <= 1


def test_additive_brightness_mode_runs() -> None:
    cfg = AugmentConfig(crop_size=12, brightness_mode="v1", color_strength=0.5)
    out = simclr_augment(uint8_images(8, size=16), cfg, gen())
    assert out.shape == (8, 3, 12, 12) and out.min() >= 0 and out.max() <= 1


def test_gray_input_gives_equal_channels() -> None:
    """One-channel input is replicated to RGB; saturation and hue are exact no-ops on gray pixels."""
    images = uint8_images(16, channels=1, size=16)
    out = simclr_augment(images, AugmentConfig(crop_size=16, blur=True), gen())
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_inputs_are_not_modified() -> None:
    images = torch.rand(4, 3, 16, 16)
    before = images.clone()
    two_views(images, AugmentConfig(crop_size=16, blur=True), gen())
    crop_flip(images, 16, gen())
    assert torch.equal(images, before)


def test_bad_inputs_are_rejected() -> None:
    cfg = AugmentConfig(crop_size=8)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        simclr_augment(torch.zeros(2, 4, 8, 8), cfg, gen())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        simclr_augment(torch.zeros(3, 8, 8), cfg, gen())
    with pytest.raises(ValueError, match="uint8"):
        simclr_augment(torch.zeros(2, 3, 8, 8, dtype=torch.int32), cfg, gen())
    with pytest.raises(ValueError, match="brightness_mode"):
        AugmentConfig(crop_size=8, brightness_mode="v3")
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_size=8, crop_scale=(0.0, 1.0))


# --- Randomness: per image, per view, per seed ---


def test_identical_images_get_different_views() -> None:
    images = uint8_images(1, size=24).repeat(8, 1, 1, 1)
    cfg = AugmentConfig(crop_size=24, blur=True)
    a, b = two_views(images, cfg, gen())
    flat = a.flatten(1)
    for i, j in itertools.combinations(range(8), 2):
        assert not torch.equal(flat[i], flat[j])
    assert not torch.equal(a, b)


def test_same_seed_same_output_different_seed_different() -> None:
    images = uint8_images(8, size=24)
    cfg = AugmentConfig(crop_size=20, blur=True)
    a1, b1 = two_views(images, cfg, gen(1))
    a2, b2 = two_views(images, cfg, gen(1))
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a3, _ = two_views(images, cfg, gen(2))
    assert not torch.equal(a1, a3)
    assert torch.equal(crop_flip(images, 16, gen(3)), crop_flip(images, 16, gen(3)))
    assert not torch.equal(crop_flip(images, 16, gen(3)), crop_flip(images, 16, gen(4)))


def test_blocking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the batch is processed in blocks; parameters are drawn up front, so blocks that split the
    batch (and straddle the two views) give the same views as one block."""
    images = uint8_images(5, size=20)
    cfg = AugmentConfig(crop_size=16, blur=True)
    whole = two_views(images, cfg, gen(7))
    monkeypatch.setattr(A, "CPU_BLOCK_VALUES", 3 * 20 * 20 * 3)  # 3 images per block: 10 = 3+3+3+1
    blocked = two_views(images, cfg, gen(7))
    for x, y in zip(whole, blocked, strict=True):
        assert torch.equal(x, y)


# --- Colour: per-image order ---


def test_color_order_is_a_random_permutation_per_image() -> None:
    params = A.sample_color_params(2000, AugmentConfig(crop_size=8), gen())
    assert torch.equal(params.order.sort(dim=1).values, torch.arange(4).expand(2000, 4))
    distinct = {tuple(row) for row in params.order.tolist()}
    assert len(distinct) == 24  # all 4! orders occur
    assert 0.75 < params.apply.float().mean() < 0.85  # color_p = 0.8
    assert 0.15 < params.grayscale.float().mean() < 0.25  # grayscale_p = 0.2


def test_each_image_follows_its_own_order() -> None:
    """All 24 orders in one batch on copies of one image: each result equals the sequential reference
    for that image's order, and the orders really give different images."""
    img = torch.rand(3, 4, 4, generator=gen(5))
    orders = torch.tensor(list(itertools.permutations(range(4))))
    n = len(orders)
    factors = {"brightness": 1.6, "contrast": 0.4, "saturation": 1.7, "hue": 0.1}
    params = color_params(n, order=orders, **{k: torch.full((n,), v) for k, v in factors.items()})
    out = A.apply_distortions(img.expand(n, -1, -1, -1).contiguous(), params)
    ref_ops = [
        lambda x: ref_brightness(x, factors["brightness"], "v2"),
        lambda x: ref_contrast(x, factors["contrast"]),
        lambda x: ref_saturation(x, factors["saturation"]),
        lambda x: ref_hue(x, factors["hue"]),
    ]
    for i, order in enumerate(orders.tolist()):
        ref = img.double().numpy()
        for op in order:
            ref = ref_ops[op](ref)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=2e-5, err_msg=f"order {order}")
    distinct = {tuple(np.round(o.numpy(), 4).ravel()) for o in out}
    assert len(distinct) > 12


def test_no_jitter_and_grayscale_flags() -> None:
    img = torch.rand(1, 3, 4, 4, generator=gen(6)).expand(3, -1, -1, -1).contiguous()
    params = color_params(
        3,
        apply=torch.tensor([False, True, False]),
        brightness=torch.full((3,), 0.5),
        grayscale=torch.tensor([False, False, True]),
    )
    out = A.apply_distortions(img, params)
    assert torch.equal(out[0], img[0])  # neither jitter nor grayscale: untouched
    torch.testing.assert_close(out[1], img[1] * 0.5)
    gray = 0.299 * img[2, 0] + 0.587 * img[2, 1] + 0.114 * img[2, 2]
    for c in range(3):
        torch.testing.assert_close(out[2, c], gray)


# --- Colour ops against references ---


@pytest.mark.parametrize("mode,values", [("v2", [0.2, 1.0, 1.8]), ("v1", [-0.8, 0.0, 0.5])])
def test_brightness(mode: str, values: list[float]) -> None:
    x = torch.rand(3, 3, 5, 5, generator=gen(1))
    out = A.adjust_brightness_(x.clone(), torch.tensor(values), mode)
    for i, v in enumerate(values):
        np.testing.assert_allclose(out[i].numpy(), ref_brightness(x[i].numpy(), v, mode), atol=1e-6)


def test_contrast_uses_per_channel_mean() -> None:
    x = torch.rand(3, 3, 5, 5, generator=gen(2))
    factors = [0.2, 1.0, 1.8]
    out = A.adjust_contrast_(x.clone(), torch.tensor(factors))
    for i, f in enumerate(factors):
        np.testing.assert_allclose(out[i].numpy(), ref_contrast(x[i].double().numpy(), f), atol=1e-6)


def test_saturation_matches_hsv() -> None:
    x = torch.rand(5, 3, 3, 3, generator=gen(3))
    x[0, :, 0, 0] = 0.5  # a gray pixel
    x[0, :, 0, 1] = 0.0  # a black pixel
    factors = [0.0, 0.5, 1.0, 1.7, 5.0]  # 5.0 drives S past 1: clipped
    out = A.adjust_saturation_(x.clone(), torch.tensor(factors))
    for i, f in enumerate(factors):
        np.testing.assert_allclose(out[i].numpy(), ref_saturation(x[i].double().numpy(), f), atol=1e-6)


def test_hue_matches_hsv() -> None:
    x = torch.rand(5, 3, 3, 3, generator=gen(4))
    x[0, :, 0, 0] = 0.25  # gray: hue undefined, must stay gray
    x[1, :, 1, 1] = torch.tensor([0.9, 0.9, 0.1])  # ties between maxima
    x[1, :, 1, 2] = torch.tensor([0.2, 0.7, 0.7])
    shifts = [0.0, 0.2, -0.2, 0.5, -0.45]
    out = A.adjust_hue_(x.clone(), torch.tensor(shifts))
    for i, d in enumerate(shifts):
        np.testing.assert_allclose(out[i].numpy(), ref_hue(x[i].double().numpy(), d), atol=1e-6)


def test_grayscale_weights() -> None:
    x = torch.eye(3).view(3, 3, 1, 1)  # pure red, green, blue
    gray = A.rgb_to_grayscale(x).flatten()
    torch.testing.assert_close(gray, torch.tensor([0.299, 0.587, 0.114]))


# --- Crop and flip ---


def test_crop_boxes_respect_area_and_aspect() -> None:
    height, width = 224, 160
    boxes = A.sample_crop_boxes(4000, height, width, gen())
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = (h * w).double() / (height * width)
    aspect = w.double() / h.double()
    # whole-pixel rounding moves area and aspect by at most about one pixel per side
    assert area.min() >= 0.08 - 0.01 and area.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.98 and aspect.max() <= (4 / 3) * 1.02
    assert area.min() < 0.1 and area.max() > 0.9  # the whole range is used
    assert len(set(top.tolist())) > 50 and len(set(left.tolist())) > 50  # positions vary


def test_crop_boxes_fallback_is_centred() -> None:
    # area 1 with aspect in [3/4, 4/3] never fits a 10 x 20 image: torchvision's fallback, centred
    boxes = A.sample_crop_boxes(3, 10, 20, gen(), scale=(1.0, 1.0))
    assert boxes.tolist() == [[0, 3, 10, 13]] * 3


def test_full_image_crop_is_identity_and_flip_reverses_columns() -> None:
    x = torch.rand(2, 3, 10, 10, generator=gen(9))
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10]])
    out = A.resized_crop(x, boxes, torch.tensor([False, True]), size=10)
    torch.testing.assert_close(out[0], x[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1].flip(-1), atol=1e-5, rtol=0)


def test_same_size_crop_is_the_pixel_window() -> None:
    x = torch.rand(1, 3, 16, 16, generator=gen(10))
    out = A.resized_crop(x, torch.tensor([[2, 5, 8, 8]]), torch.tensor([False]), size=8)
    torch.testing.assert_close(out[0], x[0, :, 2:10, 5:13], atol=1e-5, rtol=0)


def test_uint8_scale_is_folded_into_the_crop() -> None:
    images = uint8_images(2, size=12)
    boxes = torch.tensor([[0, 0, 12, 12]] * 2)
    out = A.resized_crop(images.float(), boxes, torch.tensor([False, False]), 12, scale=1 / 255)
    torch.testing.assert_close(out, images.float() / 255, atol=1e-5, rtol=0)


def test_crop_flip_shape_and_range() -> None:
    for channels in (1, 3):
        out = crop_flip(uint8_images(4, channels, size=32), 24, gen())
        assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 1


# --- Blur ---


def test_blur_kernel_size_follows_tf() -> None:
    assert A.blur_kernel_size(224) == 23
    assert A.blur_kernel_size(96) == 9
    assert A.blur_kernel_size(32) == 3
    assert A.blur_kernel_size(9) == 1


def test_gaussian_kernel_is_normalised_and_symmetric() -> None:
    kernel = A.gaussian_kernel1d(torch.tensor([0.1, 1.0, 2.0]), 23)
    torch.testing.assert_close(kernel.sum(dim=1), torch.ones(3))
    torch.testing.assert_close(kernel, kernel.flip(1))
    expected = torch.exp(-(torch.arange(-11.0, 12.0) ** 2) / 2)
    torch.testing.assert_close(kernel[1], expected / expected.sum())


def test_blur_small_sigma_is_identity_and_constant_interior_stays() -> None:
    x = torch.rand(2, 3, 12, 12, generator=gen(11))
    torch.testing.assert_close(A.gaussian_blur(x, torch.tensor([0.1, 0.1]), 5), x, atol=1e-6, rtol=0)
    const = torch.full((2, 3, 12, 12), 0.7)
    out = A.gaussian_blur(const, torch.tensor([2.0, 1.0]), 5)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], const[..., 2:-2, 2:-2])
    assert (out[..., 0, 0] < 0.7).all()  # zero padding, as TF's padding='SAME'


def test_blur_uses_each_images_sigma() -> None:
    x = torch.rand(1, 3, 12, 12, generator=gen(12)).repeat(2, 1, 1, 1)
    out = A.gaussian_blur(x, torch.tensor([0.5, 2.0]), 7)
    for i, sigma in enumerate([0.5, 2.0]):
        torch.testing.assert_close(out[i : i + 1], A.gaussian_blur(x[:1], torch.tensor([sigma]), 7))
    assert out[1].std() < out[0].std()


def test_blur_flag_per_image() -> None:
    x = torch.rand(1, 3, 12, 12, generator=gen(13)).repeat(2, 1, 1, 1)
    params = color_params(2, apply=torch.zeros(2, dtype=torch.bool))
    blur = BlurParams(apply=torch.tensor([True, False]), sigma=torch.tensor([1.5, 1.5]))
    out = A.apply_distortions(x, params, blur, kernel_size=5)
    torch.testing.assert_close(out[0], A.gaussian_blur(x[:1], torch.tensor([1.5]), 5)[0])
    assert torch.equal(out[1], x[1])


# --- Evaluation preprocessing ---


def test_center_crop_takes_the_central_window() -> None:
    images = uint8_images(2, size=64)
    out = center_crop(images, 56)  # 0.875 * 64 = 56: crop, no resize
    torch.testing.assert_close(out, images[:, :, 4:60, 4:60].float() / 255)
    resized = center_crop(images, 40)
    assert resized.shape == (2, 3, 40, 40) and resized.dtype == torch.float32
    assert resized.min() >= 0 and resized.max() <= 1


def test_center_crop_offsets_follow_tf_on_non_square_images() -> None:
    images = uint8_images(1, size=50)[:, :, :40]  # 40 x 50
    out = center_crop(images, 35)  # side round(0.875 * 40) = 35, top (40 - 35 + 1) // 2 = 3, left 8
    torch.testing.assert_close(out, images[:, :, 3:38, 8:43].float() / 255)


def test_center_crop_small_images_only_convert() -> None:
    images = uint8_images(3, channels=1, size=28)
    out = center_crop(images, 28)
    torch.testing.assert_close(out, images.float().expand(-1, 3, -1, -1) / 255)
    assert out.is_contiguous()


def test_to_float_rgb() -> None:
    images = uint8_images(2, channels=1, size=5)
    out = to_float_rgb(images)
    assert out.shape == (2, 3, 5, 5) and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, images.float().repeat(1, 3, 1, 1) / 255)
    floats = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(to_float_rgb(floats), floats.float())


def test_two_view_batch_is_the_two_views_in_one_tensor() -> None:
    from simclrv2.data.augment import two_view_batch

    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    cfg = AugmentConfig(crop_size=28, color_strength=0.5)
    a, b = two_views(images, cfg, torch.Generator().manual_seed(3))
    batch = two_view_batch(images, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(batch, torch.cat([a, b]))


@pytest.mark.parametrize("blur", [False, True])
def test_shards_of_one_global_draw_equal_the_single_process_views(blur: bool) -> None:
    """Rank r of W augments its N/W images with rows of the global draw: concatenating the ranks' views
    (view a of every rank, then view b) reproduces the one-process batch exactly, and no two ranks repeat."""
    images = (torch.rand(12, 3, 20, 20) * 255).to(torch.uint8)
    cfg = AugmentConfig(crop_size=16, blur=blur)
    whole = two_view_batch(images, cfg, torch.Generator().manual_seed(3))
    world, n = 3, 4
    parts = [
        two_view_batch(images[r * n : (r + 1) * n], cfg, torch.Generator().manual_seed(3), shard=(r, world))
        for r in range(world)
    ]
    view_a = torch.cat([p[:n] for p in parts])
    view_b = torch.cat([p[n:] for p in parts])
    assert torch.equal(torch.cat([view_a, view_b]), whole)
    # identical images on two ranks still get different views
    same = images[:4]
    r0 = two_view_batch(same, cfg, torch.Generator().manual_seed(3), shard=(0, 2))
    r1 = two_view_batch(same, cfg, torch.Generator().manual_seed(3), shard=(1, 2))
    assert not torch.equal(r0, r1)


def test_crop_flip_shards_equal_the_single_process_batch() -> None:
    images = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8)
    whole = crop_flip(images, 24, torch.Generator().manual_seed(5))
    parts = [
        crop_flip(images[r * 4 : (r + 1) * 4], 24, torch.Generator().manual_seed(5), shard=(r, 2))
        for r in (0, 1)
    ]
    assert torch.equal(torch.cat(parts), whole)
    with pytest.raises(ValueError, match="shard rank"):
        crop_flip(images, 24, torch.Generator(), shard=(2, 2))


def test_distort_views_colours_cropped_views_like_one_global_draw() -> None:
    """Streamed photos arrive cropped by the loader; the device only distorts them (SPEC 5). Two ranks'
    halves equal one process's batch, and with every distortion off the views pass through unchanged."""
    views = torch.randint(
        0, 256, (8, 3, 12, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    cfg = AugmentConfig(crop_size=12, color_strength=0.5, blur=True)
    full = A.distort_views(views, cfg, torch.Generator().manual_seed(3))
    assert full.shape == (8, 3, 12, 12) and full.dtype == torch.float32 and 0 <= full.min() <= full.max() <= 1
    # view-major rows: view a of images 0-3, view b of images 0-3; rank r holds images 2r, 2r+1 of each view
    rank_rows = [[0, 1, 4, 5], [2, 3, 6, 7]]
    for rank, rows in enumerate(rank_rows):
        part = A.distort_views(views[rows], cfg, torch.Generator().manual_seed(3), shard=(rank, 2))
        assert torch.allclose(part, full[rows], atol=1e-6)
    off = AugmentConfig(crop_size=12, color_p=0.0, grayscale_p=0.0, blur=False)
    passed = A.distort_views(views, off, torch.Generator().manual_seed(3))
    assert torch.allclose(passed, views.float() / 255, atol=1e-6)
