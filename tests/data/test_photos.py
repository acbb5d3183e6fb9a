"""Real photos (simclrv2.data.photos and the loader's crops): random-resized crops come from the whole image,
not from a centre square; JPEGs are decoded at a reduced scale when the crop allows; EXIF orientation is
applied; crops drawn by the loader are a function of (seed, epoch, batch) only (workers, resume, ranks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.data import BatchLoader, CropSpec, crop_flip, load_dataset
from simclrv2.data.augment import sample_crop_boxes_per_image
from simclrv2.data.datasets import probe_image
from simclrv2.data.photos import _open_for_box, decode_rgb, render_crop

RED = (255, 0, 0)


def _bordered(path: Path, width: int = 120, height: int = 40, border: int = 12) -> Path:
    """A wide gray image whose left and right borders (outside its centred square) are red."""
    arr = np.full((height, width, 3), 128, dtype=np.uint8)
    arr[:, :border] = RED
    arr[:, -border:] = RED
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _red(images: torch.Tensor) -> torch.Tensor:
    """Per image: does any pixel look red (uint8 or float in [0, 1])?"""
    x = images.float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    return ((x[:, 0] > 0.8) & (x[:, 1] < 0.25) & (x[:, 2] < 0.25)).flatten(1).any(dim=1)


def test_crops_of_a_non_square_image_reach_its_borders(tmp_path: Path) -> None:
    for i in range(8):
        _bordered(tmp_path / "train" / "a" / f"{i}.png")
    data = load_dataset("imagefolder", "train", root=tmp_path, image_size=40)
    assert data.dataset is not None
    square, _ = data.dataset[0]  # evaluation: the centred square, which holds no border
    assert not _red(square[None]).any()
    loader = BatchLoader(
        data, batch_size=8, shuffle=True, drop_last=True, num_workers=0, crops=CropSpec(16, views=2)
    )
    assert loader.crops_in_loader
    crops = torch.cat([images for epoch in range(4) for images, _ in loader.epoch(epoch)])
    assert crops.shape == (64, 3, 16, 16) and crops.dtype == torch.uint8
    hits = int(_red(crops).sum())
    assert 3 <= hits <= 60, hits  # the borders are in play (never with centre-square crops), not always

    # In-memory data (a user folder of one size) is cropped on the device from the whole image as well.
    for i in range(4):
        _bordered(tmp_path / "mem" / "labeled" / ("a" if i % 2 else "b") / f"{i}.png")
        _bordered(tmp_path / "mem" / "unlabeled" / f"{i}.png")
        _bordered(tmp_path / "mem" / "test" / ("a" if i % 2 else "b") / f"{i}.png")
    mem = load_dataset("folder", "train", root=tmp_path / "mem", image_size=40)
    assert mem.images is not None and mem.images.shape[-2:] == (40, 120)
    gen = torch.Generator().manual_seed(0)
    device_crops = torch.cat([crop_flip(mem.images, 16, gen) for _ in range(8)])
    assert 3 <= int(_red(device_crops).sum()) <= 60


def test_large_jpegs_are_decoded_at_a_reduced_scale_when_the_crop_allows(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1200, 0:1600]
    photo = np.stack([xx * 255 // 1599, yy * 255 // 1199, (xx + yy) % 256], axis=-1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(photo).save(path, quality=92)
    whole = (0.0, 0.0, 1.0, 1.0)
    assert _open_for_box(path, 1.0, 1.0, 64).size == (200, 150)  # 1/8: still >= 64 px on both sides
    assert _open_for_box(path, 0.25, 0.25, 64).size == (400, 300)  # a 300x400 px box: 1/4
    assert _open_for_box(path, 0.05, 0.05, 64).size == (1600, 1200)  # a 60x80 px box: full scale
    fast = render_crop(path, whole, False, 64).float()
    full = render_crop(photo, whole, False, 64).float()  # the same box from the fully decoded pixels
    assert fast.shape == (3, 64, 64) and (fast - full).abs().mean() < 4.0
    flipped = render_crop(path, whole, True, 64)
    assert torch.equal(flipped, render_crop(path, whole, False, 64).flip(-1))


def test_exif_orientation_is_applied_to_sizes_decoding_and_crops(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high; red marker top-left
    arr[:6, :6] = RED
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees clockwise: 20 wide, 40 high, marker top-right
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    header = probe_image(str(path))
    assert not isinstance(header, str) and (header.height, header.width) == (40, 20)
    image = decode_rgb(path)
    assert image.shape == (3, 40, 20) and _red(image[None, :, :6, -6:]).all()
    crop = render_crop(path, (0.0, 0.5, 0.25, 0.5), False, 10)  # the top-right quarter as displayed
    assert _red(crop[None]).all()


def _crop_batches(data, **kwargs) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    loader = BatchLoader(data, batch_size=4, crops=CropSpec(8, views=2), **kwargs)
    return [images for images, _ in loader.epoch(1)]


def test_loader_crops_depend_on_seed_and_batch_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(8):
        path = tmp_path / "train" / ("a" if i < 4 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        size = (30 + 7 * i, 24 + 3 * i)  # all different: boxes are drawn per image size
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path)
    data = load_dataset("imagefolder", "train", root=tmp_path, image_size=16)
    one = _crop_batches(data, num_workers=0)
    assert len(one) == 2 and one[0].shape == (8, 3, 8, 8)  # 4 images x 2 views
    assert all(torch.equal(a, b) for a, b in zip(one, _crop_batches(data, num_workers=2), strict=True))
    resumed = [images for images, _ in BatchLoader(
        data, batch_size=4, crops=CropSpec(8, views=2), num_workers=0
    ).epoch(1, start_batch=1)]  # fmt: skip
    assert torch.equal(resumed[0], one[1])
    ranks = [_crop_batches(data, num_workers=0, rank=r, world_size=2) for r in (0, 1)]
    for b, full in enumerate(one):  # view-major rows: rank 0's view a, rank 1's view a, then the b views
        a0, b0 = ranks[0][b].chunk(2)
        a1, b1 = ranks[1][b].chunk(2)
        assert torch.equal(torch.cat([a0, a1, b0, b1]), full)
    other = BatchLoader(data, batch_size=4, crops=CropSpec(8, views=2), seed=1, num_workers=0)
    assert not torch.equal(next(iter(other.epoch(1)))[0], one[0])


def test_per_image_boxes_fit_each_image_and_follow_the_area_rule() -> None:
    hw = torch.tensor([[10.0, 400.0], [400.0, 10.0], [64.0, 64.0]]).repeat(200, 1)
    boxes = sample_crop_boxes_per_image(hw[:, 0], hw[:, 1], torch.Generator().manual_seed(0))
    top, left, bh, bw = boxes.unbind(1)
    assert bool((top >= 0).all() and (left >= 0).all() and (bh >= 1).all() and (bw >= 1).all())
    assert bool((top + bh <= hw[:, 0]).all() and (left + bw <= hw[:, 1]).all())
    square = boxes[2::3].double()  # 64 x 64: area fraction in [0.08, 1], aspect in [3/4, 4/3]
    frac, aspect = square[:, 2] * square[:, 3] / 4096, square[:, 3] / square[:, 2]
    assert frac.min() >= 0.07 and frac.max() <= 1.0 and aspect.min() >= 0.7 and aspect.max() <= 1.4
    # the long thin images cannot hold most candidates: torchvision's fallback, centred, aspect clamped
    wide = boxes[0::3]
    assert bool((wide[:, 2] <= 10).all()) and bool((wide[:, 3] <= 14).all())


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "I;16"])
def test_odd_modes_render_to_rgb_crops(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16)).save(path)
    else:
        img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).convert(mode)
        if mode == "P":
            img.info["transparency"] = 0
        img.save(path)
    crop = render_crop(path, (0.0, 0.0, 1.0, 1.0), False, 12)
    assert crop.shape == (3, 12, 12) and crop.dtype == torch.uint8 and crop.float().std() > 10
