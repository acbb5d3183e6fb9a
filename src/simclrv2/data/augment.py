"""Batched SimCLR augmentation on the device (SPEC.md §5).

Input: a batch ``(N, C, H, W)`` of uint8 pixels (0..255) or floats (0..1), ``C`` = 1 or 3, already on the
target device. Output: float32 views in [0, 1], ``(N, 3, crop, crop)``, contiguous. Every image gets its own
random parameters, every draw comes from the caller's ``torch.Generator`` (on the generator's device, so a
seed reproduces the output bit for bit on a given device), and nothing loops over images in Python: the loops
that remain run over the 4 colour ops and their 4 positions. Everything is plain tensor math, so CUDA runs
the same code as the CPU.

What the official code (TF, google-research/simclr ``tf2/data_util.py``) does, and where we differ:

* **Random resized crop** (``crop_and_resize``). TF's ``sample_distorted_bounding_box`` draws the aspect ratio
  uniformly in [3/4, 4/3] and then the crop *height* uniformly, up to 100 attempts, whole image as fallback.
  We follow SPEC §5 / torchvision's ``RandomResizedCrop`` instead: area fraction ~ U[0.08, 1], log-aspect ~
  U[log 3/4, log 4/3], integer-pixel boxes, 10 candidates drawn for every image at once, the first valid one
  kept, torchvision's fallback when none fits (the whole image if it is square; ~3e-9 per image). "Bicubic"
  here is ``F.grid_sample(mode="bicubic")``: cubic convolution with a = -0.75 (PyTorch's and OpenCV's kernel;
  TF2's ``tf.image.resize(BICUBIC)`` uses Keys' a = -0.5), half-pixel centres, **no antialiasing** when the
  crop is shrunk (TF's resize is not antialiased either). Taps that fall outside the crop read the
  neighbouring pixels of the full image (TF crops first, so its taps clamp at the crop border); taps outside
  the image clamp to its border. The result is clipped to [0, 1] (bicubic overshoots).
* **Horizontal flip** (p = 0.5) is folded into the crop's affine map (x scale negated), so it costs nothing.
* **Colour distortion** (``color_jitter_rand``), strength s, applied with p = 0.8: brightness, contrast,
  saturation (0.8·s each) and hue (0.2·s) in a random order **per image** (TF maps over single images, so its
  ``tf.random.shuffle(range(4))`` is per image too), clipping to [0, 1] after each op. Each op matches the TF
  op it replaces:

  - brightness "v2": ``x · U[max(0, 1 − 0.8s), 1 + 0.8s]``; "v1": ``x + U[−0.8s, 0.8s]``
    (``tf.image.random_brightness``).
  - contrast: ``tf.image.adjust_contrast``: ``(x − mean) · f + mean`` with the **per-channel** mean of the
    image (torchvision blends with the mean of the grayscale image instead),
    f ~ U[max(0, 1 − 0.8s), 1 + 0.8s].
  - saturation: ``tf.image.adjust_saturation``, exact: S ← clip(S · f, 0, 1) in HSV. With H and V fixed every
    channel is linear in S, so this is ``V + (x − V) · min(f, V / (V − min))`` per pixel: no HSV round trip.
    (torchvision instead blends with the grayscale image, which also changes V.)
  - hue: ``tf.image.adjust_hue``: H ← (H + d) mod 1, d ~ U[−0.2s, 0.2s], through a batched RGB → HSV → RGB.

  Then, independently, grayscale with p = 0.2: luma with weights 0.299/0.587/0.114 (ITU-R 601, torchvision's;
  TF's ``rgb_to_grayscale`` uses 0.2989, which sums to 0.9999), copied to 3 channels.
* **Gaussian blur** (``batch_random_blur``; ImageNet-size crops only): p = 0.5 per image, σ ~ U[0.1, 2.0],
  kernel ``2·((crop // 10) // 2) + 1`` taps (23 at 224 px), separable, **zero padding** like TF's
  ``padding='SAME'`` depthwise conv (edges darken slightly for large σ), then clipped. TF draws one σ per
  batch (``random_blur`` is called on the whole batch); SPEC §5 says per image, which is what we do, through
  one grouped convolution with ``groups = N·3``.
* **Grayscale inputs** (1 channel, e.g. Fashion-MNIST) are replicated to 3 channels (after the crop, which is
  cheaper), so the model is always RGB and every colour op is defined: brightness and contrast act,
  saturation and hue are exact no-ops on gray pixels.

Why not kornia: ``kornia.augmentation.ColorJiggle``/``ColorJitter`` draw per-image factors but a single
``order = randperm(4)`` per call that they apply to the whole batch, whereas SPEC §5 needs a random order
per image; the rest (one sampling grid, four colour ops, one grouped conv) is short in plain torch and saves
a dependency.

How the per-image order is applied without a per-image loop: for each "stage" (colour position 0..3,
grayscale, blur) every image has a key (which op it gets there, or "none"). The batch is gathered into
key-sorted order, so each op runs **in place on one contiguous slice** of the images that need it (no work
for the others, no masks over the whole batch); one final scatter restores the input order. All stages'
group sizes are read back in a single host sync per block (none at all when the generator is on the CPU).
On the CPU the batch is processed in cache-sized blocks of images (``CPU_BLOCK_VALUES``; on CUDA one block
up to 1 GiB); parameters are drawn for the whole batch first, so blocking does not change the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AugmentConfig",
    "BlurParams",
    "ColorParams",
    "Shard",
    "adjust_brightness_",
    "adjust_contrast_",
    "adjust_hue_",
    "adjust_saturation_",
    "apply_distortions",
    "blur_kernel_size",
    "center_crop",
    "crop_flip",
    "distort_views",
    "gaussian_blur",
    "gaussian_kernel1d",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_blur_params",
    "sample_color_params",
    "sample_crop_boxes",
    "sample_crop_boxes_per_image",
    "simclr_augment",
    "to_float_rgb",
    "two_view_batch",
    "two_views",
]

CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop; TF tries 100: a fallback is ~3e-9 per square image
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601
# The batch goes through the pipeline in blocks of about this many float32 values per image tensor. On the
# CPU, 8 MiB (15% faster than 16 MiB at 224 px on a 2-core EPYC): the temporaries stay in the last-level
# cache and malloc recycles them, where a fresh tensor over 32 MiB is mmapped and page-faulted in on every
# allocation, which costs more than the arithmetic. On CUDA, 1 GiB: one block for any usual batch
# (N = 512 x 2 views at 224 px is 0.6 GiB), and a cap on the temporaries for larger ones.
CPU_BLOCK_VALUES = 1 << 21
DEVICE_BLOCK_VALUES = 1 << 28


@dataclass(frozen=True)
class AugmentConfig:
    """Pretraining augmentation (SPEC.md §5). Defaults are ImageNet's; CIFAR uses ``color_strength=0.5``
    and ``blur=False``."""

    crop_size: int
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    color_strength: float = 1.0  # s: 1.0 ImageNet, 0.5 CIFAR
    color_p: float = 0.8
    grayscale_p: float = 0.2
    brightness_mode: str = "v2"  # "v2" multiplicative, "v1" additive (SPEC §5)
    blur: bool = False  # on for ImageNet-size images, off for <= 32 px
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {self.crop_size}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"crop_scale must satisfy 0 < lo <= hi <= 1 (area fraction), got {self.crop_scale}"
            )
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi (width / height), got {self.crop_ratio}")
        for name in ("flip_p", "color_p", "grayscale_p", "blur_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability, expected a value in [0, 1], got {p}")
        if self.color_strength < 0:
            raise ValueError(
                f"color_strength must be >= 0 (1.0 ImageNet, 0.5 CIFAR), got {self.color_strength}"
            )
        if self.brightness_mode not in ("v1", "v2"):
            raise ValueError(
                f"brightness_mode must be 'v1' (additive) or 'v2' (multiplicative), "
                f"got {self.brightness_mode!r}"
            )
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ValueError(f"blur_sigma must satisfy 0 < lo <= hi, got {self.blur_sigma}")


@dataclass(frozen=True)
class ColorParams:
    """Per-image colour parameters, as drawn by :func:`sample_color_params`; all tensors have length N."""

    apply: Tensor  # bool: colour jitter applied (p = color_p)
    # (N, 4) int64: order[i, k] = op applied at position k: 0 brightness, 1 contrast, 2 saturation, 3 hue
    # (TF's color_jitter_rand indices)
    order: Tensor
    brightness: Tensor  # factor ("v2") or offset ("v1")
    contrast: Tensor  # factor
    saturation: Tensor  # factor
    hue: Tensor  # shift in turns (1 = 360 degrees)
    grayscale: Tensor  # bool: converted to grayscale afterwards (p = grayscale_p)

    def to(self, device: torch.device) -> ColorParams:
        return ColorParams(*(t.to(device) for t in self._tensors()))

    def narrow(self, start: int, stop: int) -> ColorParams:
        """The parameters of images ``start:stop``."""
        return ColorParams(*(t[start:stop] for t in self._tensors()))

    def select(self, rows: Tensor) -> ColorParams:
        """The parameters of the images at ``rows`` (an index tensor on the parameters' device)."""
        return ColorParams(*(t.index_select(0, rows) for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (
            self.apply,
            self.order,
            self.brightness,
            self.contrast,
            self.saturation,
            self.hue,
            self.grayscale,
        )


@dataclass(frozen=True)
class BlurParams:
    """Per-image blur parameters, as drawn by :func:`sample_blur_params`."""

    apply: Tensor  # bool (p = blur_p)
    sigma: Tensor  # standard deviation in pixels

    def narrow(self, start: int, stop: int) -> BlurParams:
        """The parameters of images ``start:stop``."""
        return BlurParams(self.apply[start:stop], self.sigma[start:stop])

    def select(self, rows: Tensor) -> BlurParams:
        """The parameters of the images at ``rows``."""
        return BlurParams(self.apply.index_select(0, rows), self.sigma.index_select(0, rows))


# --- Public entry points ---


Shard = tuple[int, int]
"""``(rank, world_size)``: the caller's images are shard ``rank`` of a global batch of ``world_size`` equal
shards (rows ``rank * N : (rank + 1) * N``). Random parameters are drawn for the whole global batch and each
rank keeps its rows, so N ranks augment exactly as one process with the global batch does (SPEC 3: N ranks
== 1 rank), with no repeats across ranks, and a run may resume under another world size."""


def _shard_rows(n: int, shard: Shard, num_views: int, device: torch.device) -> Tensor | None:
    """Rows of this rank's images in parameters drawn for ``num_views`` views of the global batch (view
    ``v`` of global image ``j`` at row ``v * N_global + j``); None for a single process (all rows)."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard rank {rank} is not in [0, world_size={world})")
    if world == 1:
        return None
    local = torch.arange(rank * n, (rank + 1) * n, device=device)
    return torch.cat([local + v * n * world for v in range(num_views)])


def simclr_augment(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """One pretraining view per image: crop + flip, colour distortion, grayscale, blur (SPEC.md §5).

    Returns ``(N, 3, crop, crop)`` float32 in [0, 1], contiguous, on ``images.device``.
    """
    return _simclr_views(images, cfg, generator, num_views=1)


def two_views(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two independent pretraining views of every image (SPEC.md §5), drawn as one 2N batch (one pass of
    colour ops over both views)."""
    views = two_view_batch(images, cfg, generator)
    n = images.shape[0]
    return views[:n], views[n:]


def two_view_batch(
    images: Tensor, cfg: AugmentConfig, generator: torch.Generator, shard: Shard = (0, 1)
) -> Tensor:
    """:func:`two_views` as the one ``(2N, 3, crop, crop)`` batch it is computed in (view a in rows ``:N``,
    view b in ``N:``): what the model's single forward pass over both views takes, without a copy.
    ``shard``: see :data:`Shard` (multi-process training)."""
    return _simclr_views(images, cfg, generator, num_views=2, shard=shard)


def distort_views(
    views: Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    num_views: int = 2,
    shard: Shard = (0, 1),
) -> Tensor:
    """Colour distortion, grayscale and blur (SPEC.md §5) of views that are already cropped and flipped
    (streamed photos: the loader's workers take the crops, :class:`simclrv2.data.loader.CropSpec`).
    ``views``: this rank's ``num_views * N`` rows, view-major. Parameters are drawn for the global batch and
    each rank keeps its rows, as in :func:`two_view_batch`. Returns float32 ``(rows, 3, H, W)`` in [0, 1]."""
    _check_images(views)
    rows_local, _, h, w = views.shape
    n = rows_local // num_views
    total = n * shard[1] * num_views
    color = sample_color_params(total, cfg, generator)
    blur = sample_blur_params(total, cfg, generator) if cfg.blur else None
    rows = _shard_rows(n, shard, num_views, color.apply.device)
    if rows is not None:
        color = color.select(rows)
        blur = None if blur is None else blur.select(rows)
    out = torch.empty(rows_local, 3, h, w, device=views.device)
    step = _block_size(views.device, 3 * h * w)
    for start in range(0, rows_local, step):  # cache-sized blocks, as in _augment_blocks
        stop = min(start + step, rows_local)
        apply_distortions(
            to_float_rgb(views[start:stop]),
            color.narrow(start, stop),
            None if blur is None else blur.narrow(start, stop),
            cfg.brightness_mode,
            blur_kernel_size(h),
            out=out[start:stop],
        )
    return out


def crop_flip(
    images: Tensor,
    crop_size: int,
    generator: torch.Generator,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    shard: Shard = (0, 1),
) -> Tensor:
    """Fine-tuning and distillation augmentation: random resized crop + horizontal flip only (SPEC.md §5, §6).
    Returns ``(N, 3, crop_size, crop_size)`` float32 in [0, 1]. ``shard``: see :data:`Shard`."""
    _check_images(images)
    n, _, h, w = images.shape
    total = n * shard[1]
    boxes = sample_crop_boxes(total, h, w, generator, crop_scale)
    flip = _rand(generator, total) < 0.5
    rows = _shard_rows(n, shard, 1, boxes.device)
    if rows is not None:
        boxes, flip = boxes.index_select(0, rows), flip.index_select(0, rows)
    return _augment_blocks(images, boxes, flip, crop_size)


def center_crop(images: Tensor, crop_size: int, crop_fraction: float = 0.875) -> Tensor:
    """Evaluation preprocessing (SPEC.md §5, TF ``preprocess_for_eval``): the centred square of side
    ``round(crop_fraction · min(H, W))``, resized bicubically (no antialias, like TF) to ``crop_size``.

    Like TF (``get_preprocess_fn``: no test crop when the image size is <= 32), a ``crop_size`` <= 32 takes
    the whole image: it is only converted to float RGB, and resized if its size differs from ``crop_size``.
    The result may share memory with ``images`` when those are already float32 RGB of the right size.
    """
    _check_images(images)
    h, w = int(images.shape[-2]), int(images.shape[-1])  # ints, also while tracing (export: a fixed shape)
    if crop_size > 32:
        side = round(crop_fraction * min(h, w))  # round half to even, like TF's rint
        top, left = (h - side + 1) // 2, (w - side + 1) // 2  # TF's offsets
        images = images[:, :, top : top + side, left : left + side]
    x, scale = _as_float(images)
    if x.shape[-2:] != (crop_size, crop_size):
        x = F.interpolate(x, size=(crop_size, crop_size), mode="bicubic", align_corners=False)
        x = x.mul_(scale).clamp_(0.0, 1.0) if scale != 1.0 else x.clamp_(0.0, 1.0)
    elif scale != 1.0:
        x = x * scale
    return _to_rgb(x).contiguous()


def to_float_rgb(images: Tensor) -> Tensor:
    """uint8 (0..255) or float (0..1) ``(N, 1 or 3, H, W)`` -> float32 ``(N, 3, H, W)`` in [0, 1], contiguous.

    One channel is replicated to three (the model is always RGB). Float32 RGB input is returned as is.
    """
    x, scale = _as_float(images)
    if scale != 1.0:
        x = x * scale
    return _to_rgb(x).contiguous()


# --- Parameter sampling (every draw on the generator's device) ---


def _rand(generator: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.rand(*shape, generator=generator, device=generator.device, dtype=dtype)


def _uniform(generator: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * _rand(generator, n)


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = CROP_ATTEMPTS,
) -> Tensor:
    """Random-resized-crop boxes, torchvision's rule vectorised (SPEC.md §5).

    For every image, ``attempts`` candidates with area fraction ~ U[scale] and log(w / h) ~ U[log ratio],
    rounded to whole pixels; the first that fits in the image wins, otherwise torchvision's fallback (the
    largest centred box whose aspect is clamped into ``ratio``). The offset is uniform over the positions
    where the box fits. Returns ``(n, 4)`` int64 rows ``(top, left, box_height, box_width)`` on the
    generator's device.
    """
    full = torch.ones(n, dtype=torch.float64, device=generator.device)
    return sample_crop_boxes_per_image(full * height, full * width, generator, scale, ratio, attempts)


def sample_crop_boxes_per_image(
    heights: Tensor,
    widths: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = CROP_ATTEMPTS,
) -> Tensor:
    """:func:`sample_crop_boxes` for images of different sizes (``heights``, ``widths``: ``(n,)``, e.g. the
    photos of a streamed batch): the same rule and the same draws, so images of one size get exactly the
    boxes :func:`sample_crop_boxes` gives them. Returns ``(n, 4)`` int64 ``(top, left, box_h, box_w)``."""
    dtype = torch.float64  # integer pixel sizes from float32 would round differently from torchvision
    n = heights.shape[0]
    h = heights.to(device=generator.device, dtype=dtype).view(n, 1)
    w = widths.to(device=generator.device, dtype=dtype).view(n, 1)
    area = (h * w) * (scale[0] + (scale[1] - scale[0]) * _rand(generator, n, attempts, dtype=dtype))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * _rand(generator, n, attempts, dtype=dtype))
    box_w = torch.sqrt(area * aspect).round().long()
    box_h = torch.sqrt(area / aspect).round().long()
    hl, wl = h.long(), w.long()
    valid = (box_w >= 1) & (box_w <= wl) & (box_h >= 1) & (box_h <= hl)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = valid.any(dim=1)
    # torchvision's fallback, per image: the aspect clamped into `ratio`, centred
    hl, wl = hl.squeeze(1), wl.squeeze(1)
    in_ratio = w.squeeze(1) / h.squeeze(1)
    fb_h = torch.where(in_ratio < ratio[0], (w.squeeze(1) / ratio[0]).round().long(), hl)
    fb_w = torch.where(in_ratio > ratio[1], (h.squeeze(1) * ratio[1]).round().long(), wl)
    box_h = torch.where(found, box_h.gather(1, first).squeeze(1), fb_h)
    box_w = torch.where(found, box_w.gather(1, first).squeeze(1), fb_w)
    offsets = _rand(generator, n, 2, dtype=dtype)
    top = torch.minimum((offsets[:, 0] * (hl - box_h + 1)).long(), hl - box_h)
    left = torch.minimum((offsets[:, 1] * (wl - box_w + 1)).long(), wl - box_w)
    top = torch.where(found, top, (hl - box_h) // 2)
    left = torch.where(found, left, (wl - box_w) // 2)
    return torch.stack([top, left, box_h, box_w], dim=1)


def sample_color_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> ColorParams:
    """Per-image colour parameters (SPEC.md §5): whether jitter applies, a random op order per image
    (argsort of uniform noise = a uniformly random permutation), one factor per op, and grayscale."""
    s = cfg.color_strength
    apply = _rand(generator, n) < cfg.color_p
    order = torch.argsort(_rand(generator, n, 4), dim=1)
    if cfg.brightness_mode == "v2":
        brightness = _uniform(generator, n, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    else:
        brightness = _uniform(generator, n, -0.8 * s, 0.8 * s)
    contrast = _uniform(generator, n, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    saturation = _uniform(generator, n, max(0.0, 1 - 0.8 * s), 1 + 0.8 * s)
    hue = _uniform(generator, n, -0.2 * s, 0.2 * s)
    grayscale = _rand(generator, n) < cfg.grayscale_p
    return ColorParams(apply, order, brightness, contrast, saturation, hue, grayscale)


def sample_blur_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> BlurParams:
    """Per-image blur decision (p = blur_p) and σ ~ U[blur_sigma] (SPEC.md §5)."""
    apply = _rand(generator, n) < cfg.blur_p
    sigma = _uniform(generator, n, *cfg.blur_sigma)
    return BlurParams(apply, sigma)


# --- Geometry ---


def resized_crop(x: Tensor, boxes: Tensor, flip: Tensor, size: int, scale: float = 1.0) -> Tensor:
    """Crop ``boxes`` (rows ``top, left, h, w`` in pixels) out of float ``x`` and resize them to
    ``size x size`` with bicubic ``grid_sample`` (see the module docstring); ``flip`` mirrors horizontally.

    ``scale`` multiplies the result (1/255 for uint8 pixels, folded into the final clip). Returns
    float32 in [0, 1] with ``x``'s channel count.
    """
    n = x.shape[0]
    height, width = x.shape[-2:]
    b = boxes.to(device=x.device, dtype=torch.float32)
    top, left, box_h, box_w = (v.view(n, 1, 1) for v in b.unbind(1))
    sign = 1.0 - 2.0 * flip.to(device=x.device, dtype=torch.float32).view(n, 1, 1)
    # grid_sample coordinates (align_corners=False): -1 and +1 are the outer edges of the image. Output
    # pixel centre u = (2j + 1) / size - 1 maps to box_centre + box_half_extent * u, so the box edges land on
    # the output edges and a full-image box is the identity. The map is an axis-aligned affine, written out
    # directly: F.affine_grid would spend a batched matmul on it.
    u = (torch.arange(size, device=x.device, dtype=torch.float32) * 2 + 1) / size - 1
    grid = torch.empty(n, size, size, 2, device=x.device, dtype=torch.float32)
    grid[..., 0] = (sign * box_w / width) * u.view(1, 1, size) + ((2 * left + box_w) / width - 1)
    grid[..., 1] = (box_h / height) * u.view(1, size, 1) + ((2 * top + box_h) / height - 1)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    if scale != 1.0:
        out.mul_(scale)
    return out.clamp_(0.0, 1.0)


# --- Colour ops ---
# In place on a float (n, 3, H, W) batch with one parameter per image; each clips to [0, 1] (TF clips after
# every op of color_jitter_rand).


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def adjust_brightness_(x: Tensor, value: Tensor, mode: str = "v2") -> Tensor:
    """Brightness (SPEC.md §5): "v2" multiplies by ``value``, "v1" adds it. In place; returns ``x``."""
    if mode == "v2":
        x.mul_(_per_image(value))
    else:
        x.add_(_per_image(value))
    return x.clamp_(0.0, 1.0)


def adjust_contrast_(x: Tensor, factor: Tensor) -> Tensor:
    """``tf.image.adjust_contrast``: ``(x - mean) * factor + mean`` with the per-image, per-channel mean."""
    f = _per_image(factor)
    mean = x.mean(dim=(2, 3), keepdim=True)
    return x.mul_(f).add_(mean * (1 - f)).clamp_(0.0, 1.0)


def adjust_saturation_(x: Tensor, factor: Tensor) -> Tensor:
    """``tf.image.adjust_saturation``, exact: in HSV, S <- clip(S * factor, 0, 1) with H and V unchanged.

    For fixed H and V each channel is ``V - V * S * k(H)``, linear in S, so scaling S by r moves every
    channel towards V by r; clipping S at 1 caps r at ``V / (V - min)`` (the minimum channel reaches 0).
    """
    v = x.amax(dim=1, keepdim=True)
    chroma = v - x.amin(dim=1, keepdim=True)
    # gray pixels (chroma 0) have x == v, so the ratio does not matter there; clamp avoids 0/0
    ratio = torch.minimum(_per_image(factor), v / chroma.clamp_min_(1e-12))
    return x.sub_(v).mul_(ratio).add_(v).clamp_(0.0, 1.0)


def adjust_hue_(x: Tensor, shift: Tensor) -> Tensor:
    """``tf.image.adjust_hue``: H <- (H + shift) mod 1 in HSV (``shift`` in turns), S and V unchanged."""
    r, g, b = x.unbind(dim=1)
    v = x.amax(dim=1)
    chroma = v - x.amin(dim=1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # hue in sextants [0, 6) with colorsys/TF tie-breaking (red, then green, then blue as the maximum)
    hue = torch.where(v == r, (g - b) / safe, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = hue.add_(6 * shift.view(-1, 1, 1)).unsqueeze(1)
    # HSV -> RGB: channel = V - C * clip(min(k, 4 - k), 0, 1), k = (n + H) mod 6, n = 5, 3, 1 for R, G, B
    offsets = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # no host copy
    k = torch.remainder(hue + offsets, 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    out = v.unsqueeze(1) - chroma.unsqueeze(1) * weight
    return x.copy_(out).clamp_(0.0, 1.0)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma ``(n, 1, H, W)`` with ITU-R 601 weights (see the module docstring for TF's 0.2989)."""
    wr, wg, wb = LUMA_WEIGHTS
    return (x[:, 0:1] * wr).add_(x[:, 1:2], alpha=wg).add_(x[:, 2:3], alpha=wb)


def _grayscale_(x: Tensor) -> Tensor:
    return x.copy_(rgb_to_grayscale(x).expand_as(x)).clamp_(0.0, 1.0)


# --- Blur ---


def blur_kernel_size(crop_size: int) -> int:
    """TF's ``gaussian_blur(kernel_size=height // 10)``: radius ``(size // 10) // 2``, 2·radius + 1 taps."""
    return 2 * ((crop_size // 10) // 2) + 1


def gaussian_kernel1d(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``(n, kernel_size)``, one per σ."""
    radius = kernel_size // 2
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma.float().view(-1, 1) ** 2))
    return kernel / kernel.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with one σ per image and zero padding (TF ``padding='SAME'``).

    All images go through one grouped convolution: ``(n, C, H, W)`` is viewed as ``(1, n·C, H, W)`` with
    ``groups = n·C``, each group carrying its image's kernel.
    """
    n, c, h, w = x.shape
    radius = kernel_size // 2
    if radius == 0:
        return x.clone()
    kernel = gaussian_kernel1d(sigma.to(x.device), kernel_size).to(x.dtype).repeat_interleave(c, dim=0)
    y = x.reshape(1, n * c, h, w)
    if x.device.type == "cpu":
        # oneDNN's depthwise convolution is 2-4x faster on channels-last input (measured, same result)
        y = y.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, kernel_size), padding=(0, radius), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, kernel_size, 1), padding=(radius, 0), groups=n * c)
    y = y.contiguous()
    return y.view(n, c, h, w)


# --- Applying per-image ops in per-image order ---

InPlaceOp = Callable[[Tensor, Tensor], object]  # (contiguous slice of images, their image ids) -> in place


def _run_stages(
    x: Tensor, stages: Sequence[tuple[Tensor, Sequence[InPlaceOp]]], out: Tensor | None = None
) -> Tensor:
    """Apply, stage after stage, ``ops[key[i]]`` to image ``i`` (``key[i] == len(ops)``: nothing).

    Each stage gathers the batch into key-sorted order so that every op sees one contiguous slice and
    works in place on exactly the images it is for; a last scatter restores the input order (into ``out``
    if given). ``x`` is not modified. Keys may live on another device (the generator's); all group sizes
    are read back together, in one host sync.
    """
    n = x.shape[0]
    keys = torch.stack([key for key, _ in stages])
    orders = torch.argsort(keys, dim=1, stable=True)
    width = max(len(ops) for _, ops in stages) + 1
    counts = torch.stack([torch.bincount(key, minlength=width)[:width] for key, _ in stages])
    counts_host: list[list[int]] = counts.tolist()
    orders = orders.to(x.device)
    slot = torch.arange(n, device=x.device)  # slot[i]: where image i currently sits in x
    held: Tensor | None = None  # held[k]: which image sits in slot k (None: image k, nothing moved yet)
    for (_, ops), order, all_sizes in zip(stages, orders, counts_host, strict=True):
        sizes = all_sizes[: len(ops)]
        if sum(sizes) == 0:
            continue  # nothing to do in this stage: skip the gather
        # advanced indexing, not index_select: the latter was up to 40x slower on a 2-core CPU (measured)
        x = x[order if held is None else slot[order]]
        held = order
        slot[order] = torch.arange(n, device=x.device)
        start = 0
        for op, size in zip(ops, sizes, strict=True):
            if size:
                op(x[start : start + size], order[start : start + size])
            start += size
    if held is None:
        return x.clone() if out is None else out.copy_(x)
    if out is None:
        return x[slot]
    return out.index_copy_(0, held, x)


def apply_distortions(
    x: Tensor,
    color: ColorParams,
    blur: BlurParams | None = None,
    brightness_mode: str = "v2",
    kernel_size: int = 1,
    out: Tensor | None = None,
) -> Tensor:
    """Colour jitter in per-image random order, then grayscale, then (if ``blur``) Gaussian blur, on a
    float RGB batch in [0, 1] (SPEC.md §5). Returns a new tensor (or ``out``); ``x`` is not modified."""
    # The factors go to the images' device. The keys (which image gets which op) stay where they were
    # drawn: with a CPU generator, sorting them and reading the group sizes needs no device sync.
    factors = color.to(x.device)
    ops_at_position: list[InPlaceOp] = [
        lambda sl, ids: adjust_brightness_(sl, factors.brightness[ids], brightness_mode),
        lambda sl, ids: adjust_contrast_(sl, factors.contrast[ids]),
        lambda sl, ids: adjust_saturation_(sl, factors.saturation[ids]),
        lambda sl, ids: adjust_hue_(sl, factors.hue[ids]),
    ]
    skip = torch.full_like(color.order[:, 0], len(ops_at_position))
    stages: list[tuple[Tensor, Sequence[InPlaceOp]]] = [
        (torch.where(color.apply, color.order[:, p], skip), ops_at_position) for p in range(4)
    ]
    stages.append((color.grayscale.logical_not().long(), [lambda sl, ids: _grayscale_(sl)]))
    if blur is not None:
        sigma = blur.sigma.to(x.device)

        def blur_op(sl: Tensor, ids: Tensor) -> None:
            sl.copy_(gaussian_blur(sl, sigma[ids], kernel_size)).clamp_(0.0, 1.0)

        stages.append((blur.apply.logical_not().long(), [blur_op]))
    return _run_stages(x, stages, out)


# --- Pipeline ---


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected a batch (N, C, H, W) with C = 1 or 3, got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"expected uint8 (0..255) or floating-point (0..1) images, got {images.dtype}")


def _as_float(images: Tensor) -> tuple[Tensor, float]:
    """float32 pixels and the factor that brings them to [0, 1]; the scaling is left to the caller so that
    it can be fused into a later pass (uint8 -> float is a copy anyway, float32 input is not copied)."""
    _check_images(images)
    if images.dtype == torch.uint8:
        return images.float(), 1.0 / 255.0
    return images.float(), 1.0


def _to_rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def _simclr_views(
    images: Tensor, cfg: AugmentConfig, generator: torch.Generator, num_views: int, shard: Shard = (0, 1)
) -> Tensor:
    """``num_views`` views of every image as one batch, view ``v`` of image ``i`` at row ``v * N + i``."""
    _check_images(images)
    n, _, h, w = images.shape
    n_global = n * shard[1]
    boxes, flips = [], []
    for _ in range(num_views):
        boxes.append(sample_crop_boxes(n_global, h, w, generator, cfg.crop_scale, cfg.crop_ratio))
        flips.append(_rand(generator, n_global) < cfg.flip_p)
    total = n_global * num_views
    color = sample_color_params(total, cfg, generator)
    blur = sample_blur_params(total, cfg, generator) if cfg.blur else None
    box, flip = torch.cat(boxes), torch.cat(flips)
    rows = _shard_rows(n, shard, num_views, box.device)
    if rows is not None:  # this rank's rows of the global draw
        box, flip, color = box.index_select(0, rows), flip.index_select(0, rows), color.select(rows)
        blur = None if blur is None else blur.select(rows)
    return _augment_blocks(images, box, flip, cfg.crop_size, color, blur, cfg.brightness_mode)


def _block_size(device: torch.device, values_per_image: int) -> int:
    budget = CPU_BLOCK_VALUES if device.type == "cpu" else DEVICE_BLOCK_VALUES
    return max(1, budget // values_per_image)


def _augment_blocks(
    images: Tensor,
    boxes: Tensor,
    flip: Tensor,
    size: int,
    color: ColorParams | None = None,
    blur: BlurParams | None = None,
    brightness_mode: str = "v2",
) -> Tensor:
    """Crop + flip (+ distortions) of ``views = len(boxes) // N`` views of every image, the parameters
    of view ``v`` of image ``i`` at row ``v * N + i``. Parameters are drawn up front, so the result does
    not depend on the block size."""
    n, c, h, w = images.shape
    total = boxes.shape[0]
    step = _block_size(images.device, max(3 * size * size, c * h * w))
    blocks = [(start, min(start + step, total)) for start in range(0, total, step)]
    out = None if len(blocks) == 1 else torch.empty(total, 3, size, size, device=images.device)
    for start, stop in blocks:
        crops = []
        for view in range(start // n, (stop - 1) // n + 1):  # the views this block spans (usually one)
            lo, hi = max(start, view * n), min(stop, (view + 1) * n)
            src, scale = _as_float(images[lo - view * n : hi - view * n])
            crops.append(resized_crop(src, boxes[lo:hi], flip[lo:hi], size, scale=scale))
        x = _to_rgb(crops[0] if len(crops) == 1 else torch.cat(crops))
        block_out = None if out is None else out[start:stop]
        if color is not None:
            x = apply_distortions(
                x,
                color.narrow(start, stop),
                None if blur is None else blur.narrow(start, stop),
                brightness_mode,
                blur_kernel_size(size),
                out=block_out,
            )
        elif block_out is not None:
            block_out.copy_(x)
        if out is None:
            return x.contiguous()
    assert out is not None
    return out
