"""Real photos: decoding any image file to RGB, random-resized crops of the whole image taken in the
loader's workers, and the decode-once in-memory store (SPEC 5).

Streamed image folders used to be decoded to a fixed ``load_size`` square cut out of the image's centre,
and random crops were then taken from that square, so a non-square photo never showed its borders to the
model. Here the crop box is drawn over the **whole oriented image** (as the official code does: it crops the
full decoded image), in the main process, from a generator seeded by (seed, epoch, batch) (so resume stays
exact and the crops do not depend on the number of workers), and the worker decodes the file and renders the
box to the crop size. Decoding is the cost of a photo pipeline, so a JPEG is decoded at a reduced DCT scale
(``PIL.Image.draft``: 1/2, 1/4 or 1/8) whenever the box still covers at least ``size`` pixels on both sides at
that scale: an ImageNet photo cropped to 96 px costs a fraction of a full decode.

The crop is rendered by PIL (``Image.resize(box=...)``, bicubic): it reads only the box, and it antialiases
when it shrinks, as torchvision's ``RandomResizedCrop`` on PIL images does; the on-device crop of in-memory
data (:func:`simclrv2.data.augment.resized_crop`) does not antialias, like TF. Colour distortion stays
batched on the device (:func:`simclrv2.data.augment.distort_views`).

Datasets small enough (a memory budget, ``data.cache_gb``) are decoded once into an :class:`ImageStore`
(a flat uint8 buffer: one allocation, nothing for forked workers to copy page by page) and later epochs
crop from memory without decoding.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ImageStore",
    "decode_array",
    "decode_into",
    "decode_rgb",
    "draft_scale",
    "held_size",
    "open_rgb",
    "oriented_size",
    "render_crop",
]

# EXIF orientations 5-8 rotate by 90 degrees: the stored width is the displayed height.
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION = 0x0112


def oriented_size(img: Any) -> tuple[int, int]:
    """(width, height) of an opened PIL image as displayed, i.e. after its EXIF orientation is applied."""
    w, h = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block: PIL decodes the pixels anyway, without rotating
        orientation = 1
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)


def _to_rgb(img: Any) -> Any:
    """Any PIL mode -> RGB: 16/32-bit gray scaled (PIL's conversion would clip at 255), palettes with
    transparency through RGBA (PIL warns otherwise), alpha dropped (as :mod:`simclrv2.inference` does)."""
    from PIL import Image

    if img.mode.startswith("I;16"):
        img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
    elif img.mode == "I":  # 32-bit int gray, in practice 16-bit data
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((arr >> 8 if arr.max() > 255 else arr).clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        img = Image.fromarray((arr * scale).clip(0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == "RGB" else img.convert("RGB")


def open_rgb(path: str | Path, draft: tuple[int, int] | None = None) -> Any:
    """Decode ``path`` to an RGB PIL image, EXIF orientation applied, whatever its mode.

    ``draft`` = (width, height) in the *stored* (unrotated) frame: a JPEG is decoded at the largest DCT
    reduction (1/2, 1/4, 1/8) that keeps it at least that large (``Image.draft``); other formats ignore it.
    PIL rather than torchvision.io: torchvision's decoders are deprecated since 0.29 (in favour of
    TorchCodec, not a dependency here), and PIL reads BMP and draft-decodes JPEGs.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        if draft is not None and opened.format == "JPEG":
            opened.draft("RGB", draft)
        return _to_rgb(ImageOps.exif_transpose(opened))


def decode_rgb(path: str | Path, min_size: int | None = None) -> Tensor:
    """Decode an image file to uint8 (3, H, W) RGB, whatever its mode (gray, palette, RGBA, 16-bit).

    With ``min_size``, JPEGs are decoded at a reduced DCT scale that keeps both sides >= min_size: several
    times faster on large photos that are about to be downscaled anyway."""
    img = open_rgb(path, None if min_size is None else (min_size, min_size))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def held_size(height: int, width: int, shorter: int | None) -> tuple[int, int]:
    """(H, W) an image is held at in memory: shorter side reduced to ``shorter`` when larger (torchvision's
    rounding of the longer side), never enlarged."""
    short, long = min(height, width), max(height, width)
    if shorter is None or short <= shorter:
        return height, width
    new_long = int(shorter * long / short)
    return (shorter, new_long) if height <= width else (new_long, shorter)


def decode_array(path: str | Path, channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to a uint8 (H, W, channels) array (channels 1: luma of the RGB image), resized to ``size`` =
    (H, W) when given and different (bilinear, antialiased; JPEGs draft-decoded to no less than it)."""
    from PIL import Image

    img = open_rgb(path, None if size is None else (min(size), min(size)))
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    if channels == 1:
        img = img.convert("L")
    arr = np.array(img)  # a writable copy (torch warns on read-only arrays)
    return arr[:, :, None] if arr.ndim == 2 else arr


def draft_scale(box_height: float, box_width: float, size: int) -> float:
    """How much a JPEG may be reduced while decoding, for a box of that many (full-resolution) pixels that
    is rendered to ``size`` x ``size``: the box must keep at least ``size`` pixels on both sides."""
    return max(1.0, min(box_height, box_width) / size)


def render_crop(
    source: str | Path | np.ndarray,
    box: Sequence[float],
    flip: bool,
    size: int,
) -> Tensor:
    """The random-resized crop ``box`` of one image as uint8 (3, size, size) (SPEC 5).

    ``source``: an image file, or a decoded uint8 (H, W, C) array (:class:`ImageStore`). ``box``: (top,
    left, height, width) as **fractions** of the oriented image, so the same draw fits the image whatever
    scale it is decoded at. ``flip``: mirror horizontally. Bicubic, antialiased when shrinking (PIL). The
    result is a channels-first view of the rendered pixels (the batch collation makes it contiguous)."""
    from PIL import Image, ImageOps

    if isinstance(source, np.ndarray):
        return _render(Image.fromarray(source[:, :, 0] if source.shape[2] == 1 else source), box, flip, size)
    with Image.open(source) as opened:
        _draft_for_box(opened, float(box[2]), float(box[3]), size)
        ImageOps.exif_transpose(opened, in_place=True)  # no copy: rendered before the file closes
        return _render(_to_rgb(opened), box, flip, size)


def _render(img: Any, box: Sequence[float], flip: bool, size: int) -> Tensor:
    from PIL import Image

    top, left, bh, bw = (float(v) for v in box)
    w, h = img.size
    region = (left * w, top * h, (left + bw) * w, (top + bh) * h)
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=region)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if out.mode != "RGB":
        out = out.convert("RGB")
    return torch.from_numpy(np.array(out)).permute(2, 0, 1)


def _draft_for_box(opened: Any, bh: float, bw: float, size: int) -> None:
    """Let a JPEG decode at the smallest DCT scale at which a box of fractions (bh, bw) of the oriented
    image still has ``size`` pixels on both sides."""
    if opened.format != "JPEG":
        return
    ow, oh = oriented_size(opened)
    reduce = draft_scale(bh * oh, bw * ow, size)
    if reduce >= 2:
        sw, sh = opened.size  # the stored frame (draft runs before the EXIF rotation)
        opened.draft("RGB", (math.ceil(sw / reduce), math.ceil(sh / reduce)))


def _open_for_box(path: str | Path, bh: float, bw: float, size: int) -> Any:
    """``path`` decoded as :func:`render_crop` decodes it (for tests and the loader benchmark)."""
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        _draft_for_box(opened, bh, bw, size)
        return _to_rgb(ImageOps.exif_transpose(opened))


class ImageStore:
    """Decoded images of any sizes held in one flat uint8 buffer: ``store[i]`` is image i as (H, W, C).

    One allocation instead of N arrays: forked DataLoader workers share it without touching (and so copying)
    per-image Python objects (the copy-on-read growth of PyTorch issue #13246)."""

    def __init__(self, shapes: np.ndarray) -> None:
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 3)  # (N, 3): H, W, C
        sizes = self.shapes.prod(axis=1)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.buffer = np.empty(int(self.offsets[-1]), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def __getitem__(self, i: int) -> np.ndarray:
        h, w, c = (int(v) for v in self.shapes[i])
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].reshape(h, w, c)

    def put(self, i: int, image: np.ndarray) -> None:
        view = self[i]
        if image.shape != view.shape:
            raise ValueError(f"image {i} decoded to {image.shape}, its header said {view.shape}")
        view[...] = image


def decode_into(
    paths: Sequence[str],
    put: Callable[[int, np.ndarray], None],
    channels: int,
    on_error: Callable[[int, str], None],
    sizes: np.ndarray | None = None,
    desc: str = "decoding images",
    show_progress: bool = True,
) -> None:
    """Decode every file once (threads: PIL releases the GIL while decoding) into ``put(i, (H, W, C))``, at
    ``sizes[i]`` = (H, W) when given, with a progress bar; a file that fails calls ``on_error(i, reason)``."""
    from simclrv2.engine.runtime import progress

    def one(i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's warnings on odd files; failures are reported below
                size = None if sizes is None else (int(sizes[i][0]), int(sizes[i][1]))
                return i, decode_array(paths[i], channels, size), ""
        except Exception as err:  # PIL raises many types for broken or foreign files
            return i, None, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"

    bar = progress(total=len(paths), desc=desc, unit="img", disable=not show_progress, leave=False)
    workers = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, image, reason in pool.map(one, range(len(paths)), chunksize=64):
            if image is None:
                on_error(i, reason)
            else:
                put(i, image)
            bar.update(1)
    bar.close()
