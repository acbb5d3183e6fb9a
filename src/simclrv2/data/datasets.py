"""Datasets as uint8 tensors: Fashion-MNIST, CIFAR-10/100, STL-10, image folders and a synthetic set.

Every loader returns an :class:`ImageData`. Small datasets are held in memory as one uint8 ``(N, C, H, W)``
tensor so that :class:`simclrv2.data.loader.BatchLoader` can move them to the device once and augment whole
batches there (STYLE.md, lesson 12: airbench keeps CIFAR-10 on the GPU). Image folders are too large for that:
they stream through a :class:`torch.utils.data.Dataset` that decodes each file to a fixed-size uint8 tensor.
Pixels stay uint8 until augmentation: 4x less memory than float and no normalisation (SPEC.md §1: official
models take RGB in [0, 1] without mean/std).
"""

from __future__ import annotations

import gzip
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from simclrv2.data.photos import ImageStore, decode_rgb, oriented_size, render_crop

DATASETS: tuple[str, ...] = (
    "fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder", "folder", "synthetic",
)  # fmt: skip

SPLITS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "imagefolder": ("train", "test", "val"),
    # A user's own folder (simclrv2.data.user_folder): train = labeled (minus validation) + unlabeled pool
    # (label -1), test = test/ or the held-out validation part of the labeled images.
    "folder": ("train", "test", "labeled", "unlabeled"),
    "synthetic": ("train", "test"),
}

# Where CIFAR/STL-10 are looked for, and downloads go, when no root is given (relative to the working dir).
DEFAULT_ROOT = Path("data")

# Debian's `dataset-fashion-mnist` package installs the original gzipped IDX files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_IMAGEFOLDER_SIZE = 256  # 224 / 0.875: room for the SPEC.md §5 eval centre crop to 224
DEFAULT_SYNTHETIC_SIZE = {"train": 512, "test": 256}
DEFAULT_SYNTHETIC_IMAGE_SIZE = 32
SYNTHETIC_CLASSES = 10
BAD_IMAGE_POLICIES = ("fail", "skip")


class BadImagesError(RuntimeError):
    """Image files that cannot be read (``data.bad_images=fail``); the message lists them and the fix.

    Not a ValueError/FileNotFoundError: the stages treat those as "this split does not exist"."""


class BadImagesWarning(UserWarning):
    """Image files left out or upscaled; the message counts them and lists the first few."""


@dataclass
class ImageData:
    """A split of a dataset. Small sets are held in memory as one uint8 tensor; large ones stream.

    Attributes:
        images: uint8 ``(N, C, H, W)`` when in memory, else None.
        labels: int64 ``(N,)``; -1 where unknown (STL-10 unlabeled).
        classes: class names; ``labels`` index into this list.
        dataset: for streaming data, ``dataset[i] -> (uint8 CHW tensor of fixed size, int label)``.
        name: the dataset name and split, for logs.
        eval_name: what a model evaluated on this split reports it as: "test", or "validation" for the
            held-out labeled images of a folder without a test set.
    """

    images: Tensor | None
    labels: Tensor
    classes: list[str]
    dataset: Dataset | None = None
    name: str = ""
    eval_name: str = "test"

    def __post_init__(self) -> None:
        if (self.images is None) == (self.dataset is None):
            raise ValueError("ImageData needs exactly one of `images` (in memory) or `dataset` (streaming)")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.dim() != 4:
                raise ValueError(
                    f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
                )
            if len(self.images) != len(self.labels):
                raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        """True when the images are one uint8 tensor (moved to the device whole by the loader)."""
        return self.images is not None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        if self.images is not None:
            c, h, w = self.images.shape[1:]
            return (int(c), int(h), int(w))
        shape = getattr(self.dataset, "image_shape", None)
        if shape is None:  # a custom streaming dataset: decode one image to find out
            assert self.dataset is not None
            shape = tuple(self.dataset[0][0].shape)
        c, h, w = shape
        return (int(c), int(h), int(w))


def load_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    synthetic_size: int | None = None,
    seed: int = 0,
    bad_images: str = "fail",
    cache_gb: float | None = None,
    validation_fraction: float | None = None,
) -> ImageData:
    """Load one split of a dataset as an :class:`ImageData`.

    Args:
        name: one of :data:`DATASETS`.
        split: "train" or "test"; stl10 also has "unlabeled" and "train+unlabeled"; imagefolder accepts "val"
            as another name for "test".
        root: where the data lives (CIFAR/STL-10 default to ``./data``; imagefolder requires it).
            Fashion-MNIST is also found in Debian's system directory without a root.
        download: let torchvision download Fashion-MNIST/CIFAR/STL-10 into ``root`` when missing.
        image_size: side of the square images for imagefolder (default 256) and synthetic (default 32).
            Fixed-size datasets keep their native resolution; augmentation resizes crops anyway.
        synthetic_size: number of synthetic images (default 512 train / 256 test).
        seed: seed of the synthetic data.
        bad_images: imagefolder and folder: ``fail`` on unreadable image files (listing them) or ``skip``
            them with a warning (see :func:`load_imagefolder`).
        cache_gb, validation_fraction: folder only (see :func:`simclrv2.data.user_folder.load_user_folder`).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if split not in SPLITS[name]:
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {', '.join(SPLITS[name])}")
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root, download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, root, download)
    if name == "stl10":
        return load_stl10(split, root, download)
    if name == "imagefolder":
        return load_imagefolder(split, root, image_size, bad_images)
    if name == "folder":
        from simclrv2.data.user_folder import load_user_folder

        return load_user_folder(split, root, image_size, bad_images, cache_gb, validation_fraction)
    return make_synthetic(split, synthetic_size, image_size, seed)


def folder_options(data_cfg: Any) -> dict[str, Any]:
    """The ``load_dataset`` keywords that only a user's folder reads, from a stage's ``data`` config (the
    dataclass, or its dict in a saved config; keys missing from older configs are None)."""
    keys = ("cache_gb", "validation_fraction")
    if isinstance(data_cfg, dict):
        return {k: data_cfg.get(k) for k in keys}
    return {k: getattr(data_cfg, k, None) for k in keys}


# --------------------------------------------------------------------------------------------- Fashion-MNIST


def _fashion_mnist_candidates(root: str | Path | None) -> list[Path]:
    # An explicit root comes first: the user's own copy beats the system one. The Debian directory is the
    # fallback, so that a generic data root (shared with CIFAR) still finds Fashion-MNIST without a download.
    dirs = []
    if root is not None:
        r = Path(root).expanduser()
        dirs += [r / "fashion-mnist", r / "FashionMNIST" / "raw", r]
    dirs.append(FASHION_MNIST_SYSTEM_DIR)
    return dirs


def _idx_file(directory: Path, stem: str) -> Path | None:
    """The IDX file `stem` in `directory`, uncompressed (faster) or gzipped; None when neither exists."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | Path | None) -> Path:
    """The directory holding the four Fashion-MNIST IDX files (gzipped or not).

    Looks in ``root/fashion-mnist``, ``root/FashionMNIST/raw`` (torchvision's layout), ``root`` itself, then
    Debian's ``/usr/share/datasets/fashion-mnist``. Raises FileNotFoundError listing what was tried.
    """
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    tried = _fashion_mnist_candidates(root)
    for directory in tried:
        if all(_idx_file(directory, stem) is not None for stem in stems):
            return directory
    raise FileNotFoundError(
        "Fashion-MNIST not found: none of these directories holds "
        f"{', '.join(stems)} (optionally .gz): {', '.join(str(d) for d in tried)}. "
        "Fix: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or let torchvision download it into "
        "the data root with `--set data.download=true`."
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a uint8 array of its stated shape.

    Parsed here rather than with torchvision's MNIST reader: it is a few lines of numpy, needs no
    torchvision directory layout (Debian's files sit in a flat directory, gzipped), and reads the
    gzipped file directly instead of first extracting a copy next to it.
    """
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    # Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dims, then each dim as a
    # big-endian int32.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX type code {raw[2]:#04x}, expected 0x08 (unsigned byte)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {dims} = {expected} bytes, file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(split: str, root: str | Path | None = None, download: bool = False) -> ImageData:
    """Fashion-MNIST as uint8 (N, 1, 28, 28): 60000 train / 10000 test images, 10 classes."""
    try:
        directory = find_fashion_mnist(root)
    except FileNotFoundError:
        if not download:
            raise
        import torchvision

        download_root = Path(root).expanduser() if root is not None else DEFAULT_ROOT
        torchvision.datasets.FashionMNIST(str(download_root), train=split == "train", download=True)
        directory = find_fashion_mnist(download_root)
    image_stem, label_stem = FASHION_MNIST_FILES[split]
    image_path, label_path = _idx_file(directory, image_stem), _idx_file(directory, label_stem)
    assert image_path is not None and label_path is not None  # find_fashion_mnist checked
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    return ImageData(
        images=torch.from_numpy(images.copy()).unsqueeze(1),  # copy: frombuffer arrays are read-only
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(FASHION_MNIST_CLASSES),
        name=f"fashion-mnist/{split}",
    )


# ------------------------------------------------------------------------------------------- CIFAR, STL-10


def _missing_files(directory: Path, names: list[str]) -> list[str]:
    return [n for n in names if not (directory / n).is_file()]


def _not_found(what: str, directory: Path, missing: list[str]) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {directory} lacks {', '.join(missing)}. Fix: point `data.root` at the directory "
        f"that holds {directory.name}/, or download it there with `--set data.download=true`."
    )


def load_cifar(name: str, split: str, root: str | Path | None = None, download: bool = False) -> ImageData:
    """CIFAR-10 or CIFAR-100 as uint8 (N, 3, 32, 32), read by torchvision from the python-pickle batches.

    The batches are Python pickles, which can run code when loaded: only use files from a trusted source
    (a later issue replaces this reader with one that does not unpickle).
    """
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root_path = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    folder = root_path / cls.base_folder
    missing = _missing_files(folder, [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]])
    if missing and not download:
        raise _not_found(name, folder, missing)
    # torchvision checks the md5 of every batch file on each load (~0.5 s for CIFAR): a corrupt file fails
    # here with its RuntimeError rather than training on garbage.
    ds = cls(str(root_path), train=split == "train", download=download)
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return ImageData(
        images=images,
        labels=torch.as_tensor(ds.targets, dtype=torch.int64),
        classes=list(ds.classes),
        name=f"{name}/{split}",
    )


def load_stl10(split: str, root: str | Path | None = None, download: bool = False) -> ImageData:
    """STL-10 as uint8 (N, 3, 96, 96) from the binary release (``root/stl10_binary``), read by torchvision.

    Splits: train (5000), test (8000), unlabeled (100000, labels -1), train+unlabeled (105000).
    All are held in memory (unlabeled: 2.8 GB as uint8).
    """
    import torchvision

    cls = torchvision.datasets.STL10
    root_path = Path(root).expanduser() if root is not None else DEFAULT_ROOT
    folder = root_path / cls.base_folder
    missing = _missing_files(folder, [f for f, _ in cls.train_list + cls.test_list])
    if missing and not download:
        raise _not_found("stl10", folder, missing)
    # torchvision checks the md5s of all five files (2.6 GB) on every load: a few seconds, once per run.
    ds = cls(str(root_path), split=split, download=download)
    labels = ds.labels if ds.labels is not None else np.full(len(ds.data), -1)
    return ImageData(
        images=torch.from_numpy(np.ascontiguousarray(ds.data)),  # torchvision's is a transposed view
        labels=torch.from_numpy(np.asarray(labels).astype(np.int64)),
        classes=list(getattr(ds, "classes", STL10_CLASSES)),  # torchvision sets it only if class_names.txt
        name=f"stl10/{split}",
    )


# -------------------------------------------------------------------------------------------- image folders


class ImageFolderDataset(Dataset):
    """Image files read on access, in two ways (SPEC 5):

    * ``dataset[i]`` -> (uint8 (3, size, size), label): shorter side resized to ``image_size``, centred
      square. What evaluation, feature extraction and prediction take (then the eval centre crop).
    * ``dataset[(i, label, top, left, height, width, flip, size)]`` -> (uint8 (3, size, size), label): a
      random-resized crop of the **whole** oriented image (box as fractions of it, drawn by the loader;
      :class:`simclrv2.data.loader.BatchLoader` with ``crops``), JPEGs decoded at a reduced scale when the
      box allows (:func:`simclrv2.data.photos.render_crop`). Needs ``sizes``.

    Decoding happens in DataLoader workers; with a ``store`` (decoded once, :class:`ImageStore`) nothing is
    decoded at all. Paths and labels are numpy arrays rather than a list of tuples: millions of small Python
    objects would be copied page by page into every forked worker as reference counts touch them (the
    "copy-on-read" memory growth of PyTorch issue #13246).
    """

    def __init__(
        self,
        samples: list[tuple[str, int]],
        image_size: int,
        bad_images: str = "fail",
        sizes: np.ndarray | None = None,
        store: ImageStore | None = None,
    ) -> None:
        self.paths = np.array([path for path, _ in samples], dtype=np.str_)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.image_size = image_size
        self.image_shape = (3, image_size, image_size)
        self.bad_images = bad_images
        self.sizes = None if sizes is None else np.asarray(sizes, dtype=np.int64).reshape(-1, 2)  # (H, W)
        self.store = store

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def supports_crops(self) -> bool:
        """True when the loader can draw whole-image crop boxes for it (the image sizes are known)."""
        return self.sizes is not None

    def __getitem__(self, key: int | tuple) -> tuple[Tensor, int]:
        if isinstance(key, tuple):
            index, label, top, left, bh, bw, flip, size = key
            box = (top, left, bh, bw)
            image = self._read(int(index), lambda src: render_crop(src, box, bool(flip), int(size)))
            return image, int(label)
        return self._eval_image(int(key))

    def _eval_image(self, index: int) -> tuple[Tensor, int]:
        from torchvision.transforms.v2 import functional as F

        size = self.image_size

        def square(src: str | np.ndarray) -> Tensor:
            if isinstance(src, np.ndarray):
                image = torch.from_numpy(src).permute(2, 0, 1).expand(3, -1, -1)
            else:
                image = decode_rgb(src, min_size=size)
            image = F.resize(image, [size], antialias=True)  # one int: the shorter side becomes `size`
            return F.center_crop(image, [size, size]).contiguous()

        return self._read(index, square, with_label=True)

    def _read(self, index: int, render: Any, with_label: bool = False) -> Any:
        """``render(file path or stored array)`` of image ``index``. The header scan before training catches
        most bad files; one that only fails to decode (a truncated JPEG) stops the run with its path
        (``fail``) or is replaced by the next readable image (``skip``: deterministic, so resume stays
        exact)."""
        if self.store is not None:
            out = render(self.store[index])
            return (out, int(self.labels[index])) if with_label else out
        for attempt in range(min(len(self), 100)):
            i = (index + attempt) % len(self)
            path = str(self.paths[i])
            try:
                out = render(path)
                break
            except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable files
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                if self.bad_images != "skip":
                    raise BadImagesError(
                        f"cannot decode image {path} ({reason}). Fix: remove or repair it, or leave "
                        "unreadable images out with --set data.bad_images=skip"
                    ) from None
                print(f"simclrv2: warning: skipping unreadable image {path} ({reason})", file=sys.stderr)
        else:
            raise BadImagesError(f"no readable image among the 100 files from {self.paths[index]} on")
        return (out, int(self.labels[i])) if with_label else out


def _split_dirs(root: Path, split: str) -> list[Path]:
    return [root / "train"] if split == "train" else [root / "test", root / "val"]


def _class_dirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _list_files(directory: Path) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``directory``, sorted; hidden files are not listed."""
    images: list[str] = []
    others: list[str] = []
    for p in directory.rglob("*"):
        if p.name.startswith(".") or not p.is_file():
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(str(p))
    return sorted(images), sorted(others)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says: PIL mode and the size as displayed (EXIF orientation applied)."""

    mode: str
    height: int
    width: int


def probe_image(path: str) -> ImageHeader | str:
    """The file's :class:`ImageHeader`, or the reason it is not a readable image.

    Reads the header only (PIL opens lazily), so scanning a large folder costs about one small read per file.
    PNGs are also checked chunk by chunk (``verify``), and a JPEG without its end marker (a truncated file)
    is decoded to find out; images over PIL's decompression-bomb limit are refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # < 2x the limit: allowed
            with Image.open(path) as img:
                mode, fmt = img.mode, img.format
                width, height = oriented_size(img)
            if fmt == "PNG":
                with Image.open(path) as img:
                    img.verify()  # must come right after open (PIL)
            if fmt == "JPEG" and not _ends_with_jpeg_marker(path):
                decode_rgb(path, min_size=1)  # raises for a truncated scan, passes for trailing bytes
    except Image.DecompressionBombError as err:
        return f"decompression bomb: {str(err).splitlines()[0]} (Fix: downscale it)"
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    if width < 1 or height < 1:
        return f"empty image {width}x{height}"
    return ImageHeader(mode, height, width)


def _ends_with_jpeg_marker(path: str) -> bool:
    """True when the JPEG's end-of-image marker (FF D9) is in its last 4 KiB (some cameras append bytes)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        return b"\xff\xd9" in f.read()


def scan_image_headers(files: list[str], policy: str, load_size: int) -> tuple[list[str], list[ImageHeader]]:
    """The readable files of ``files`` and their headers (threads for large folders), before any training.

    Unreadable ones raise :class:`BadImagesError` listing them (``policy="fail"``) or are dropped with a
    :class:`BadImagesWarning` that counts them (``"skip"``). Images smaller than ``load_size`` are kept
    (upscaled, as every reference pipeline does) with a warning."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"data.bad_images: {policy!r} is not one of {', '.join(BAD_IMAGE_POLICIES)}")
    if len(files) > 256:
        with ThreadPoolExecutor(max_workers=16) as pool:
            probes = list(pool.map(probe_image, files, chunksize=64))
    else:
        probes = [probe_image(f) for f in files]
    bad = [(f, p) for f, p in zip(files, probes, strict=True) if isinstance(p, str)]
    good = [(f, p) for f, p in zip(files, probes, strict=True) if isinstance(p, ImageHeader)]
    small = [f for f, p in good if min(p.height, p.width) < load_size]
    if bad:
        report_bad_files(bad, len(files), policy, "image files cannot be read", "unreadable image files")
    if small:
        warnings.warn(
            f"{len(small)} of {len(files)} images are smaller than the load size {load_size} px and are "
            f"upscaled, e.g. {', '.join(small[:3])} (lower data.load_size to avoid it)",
            BadImagesWarning,
            stacklevel=3,
        )
    return [f for f, _ in good], [p for _, p in good]


def report_bad_files(
    bad: list[tuple[str, str]], total: int, policy: str, problem: str, skipped: str, fix: str = ""
) -> None:
    """Stop (``fail``: :class:`BadImagesError` listing the first five and the fix) or warn, counting them
    (``skip``), about ``bad`` = [(file, reason)] of ``total`` files."""
    listed = "; ".join(f"{f} ({why})" for f, why in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    if policy == "fail":
        raise BadImagesError(
            f"{len(bad)} of {total} {problem}: {listed}{more}. Fix: {fix or 'remove or repair them'}, or "
            "leave them out with --set data.bad_images=skip"
        )
    warnings.warn(
        f"skipped {len(bad)} of {total} {skipped} (data.bad_images=skip): {listed}{more}",
        BadImagesWarning,
        stacklevel=4,
    )


def header_sizes(headers: list[ImageHeader]) -> np.ndarray:
    """(N, 2) int64 (height, width) of every image as displayed."""
    return np.array([(h.height, h.width) for h in headers], dtype=np.int64).reshape(-1, 2)


def scan_images(files: list[str], policy: str, load_size: int) -> list[str]:
    """The readable files of ``files`` (see :func:`scan_image_headers`)."""
    return scan_image_headers(files, policy, load_size)[0]


def load_imagefolder(
    split: str, root: str | Path | None, image_size: int | None = None, bad_images: str = "fail"
) -> ImageData:
    """Images in ``root/{train,test}/<class>/*`` (``val`` may replace ``test``), streamed.

    Class names are the sorted union of the class folders of both splits, so that a label means the same
    class in train and test even if one split lacks a class. Every file's header is read before training
    (:func:`scan_images`): unreadable files stop the run or, with ``bad_images="skip"``, are left out; files
    that are not images by their extension are ignored with a warning. Training crops are taken from the whole
    image (the header's size is kept for the loader to draw boxes; :class:`ImageFolderDataset`).
    """
    if root is None:
        raise ValueError("imagefolder needs a root: the directory holding train/ and test/ (or val/)")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"imagefolder root {root_path} does not exist (expected {root_path}/train/...)"
        )
    size = DEFAULT_IMAGEFOLDER_SIZE if image_size is None else int(image_size)
    if size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    candidates = _split_dirs(root_path, split)
    split_dir = next((d for d in candidates if d.is_dir()), None)
    if split_dir is None:
        raise FileNotFoundError(
            f"imagefolder split {split!r}: none of {', '.join(str(d) for d in candidates)} exists"
        )
    all_split_dirs = [d for d in (root_path / "train", root_path / "test", root_path / "val") if d.is_dir()]
    classes = sorted({c for d in all_split_dirs for c in _class_dirs(d)})
    present = _class_dirs(split_dir)
    if not present:
        raise FileNotFoundError(
            f"no class folders in {split_dir}: expected {split_dir}/<class>/<image files>"
        )
    samples: list[tuple[str, int]] = []
    empty = []
    others = []
    for class_name in present:
        files, other = _list_files(split_dir / class_name)
        others += other
        if not files:
            empty.append(class_name)
        label = classes.index(class_name)
        samples += [(f, label) for f in files]
    if empty:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders of {split_dir}: {', '.join(empty)}. "
            "Remove the empty folders or add images."
        )
    if others:
        warnings.warn(
            f"ignored {len(others)} files in {split_dir} that are not images "
            f"({', '.join(IMAGE_EXTENSIONS)}), e.g. {', '.join(others[:3])}",
            BadImagesWarning,
            stacklevel=2,
        )
    files, headers = scan_image_headers([f for f, _ in samples], bad_images, size)
    label_of = dict(samples)
    samples = [(f, label_of[f]) for f in files]
    left = {classes[label] for _, label in samples}
    lost = [c for c in present if c not in left]
    if lost:
        raise BadImagesError(
            f"no readable images left in class folders of {split_dir}: {', '.join(lost)} "
            "(data.bad_images=skip left out every file). Repair the images or remove the folders."
        )
    return ImageData(
        images=None,
        labels=torch.tensor([label for _, label in samples], dtype=torch.int64),
        classes=classes,
        dataset=ImageFolderDataset(samples, size, bad_images, sizes=header_sizes(headers)),
        name=f"imagefolder/{split}",
    )


# ------------------------------------------------------------------------------------------------ synthetic


def make_synthetic(
    split: str, size: int | None = None, image_size: int | None = None, seed: int = 0
) -> ImageData:
    """A learnable toy dataset for tests and smoke runs: 10 classes of colour patterns plus noise.

    Each class is a random low-frequency colour pattern (4x4 upsampled), shared by both splits (drawn from
    `seed`); each image is its class pattern, randomly shifted, plus pixel noise drawn per split, so train
    and test are different images of the same classes. Labels are balanced (N // 10 per class, remainder to
    the first classes) and shuffled. Deterministic in (split, size, image_size, seed).
    """
    n = DEFAULT_SYNTHETIC_SIZE[split] if size is None else int(size)
    side = DEFAULT_SYNTHETIC_IMAGE_SIZE if image_size is None else int(image_size)
    if n <= 0 or side <= 0:
        raise ValueError(f"synthetic_size and image_size must be positive, got {n} and {side}")
    # Three disjoint seed streams (patterns, train, test) so that no seed's split reuses another's patterns.
    patterns_gen = torch.Generator().manual_seed(3 * seed)
    images_gen = torch.Generator().manual_seed(3 * seed + (1 if split == "train" else 2))

    coarse = torch.rand(SYNTHETIC_CLASSES, 3, 4, 4, generator=patterns_gen)
    patterns = torch.nn.functional.interpolate(
        coarse, size=(side, side), mode="bilinear", align_corners=False
    )
    labels = (torch.arange(n) % SYNTHETIC_CLASSES)[torch.randperm(n, generator=images_gen)]
    shifts = torch.randint(-side // 8, side // 8 + 1, (n, 2), generator=images_gen)
    noise = 0.15 * torch.randn(n, 3, side, side, generator=images_gen)
    # Circular shift of each image's pattern by (dy, dx), as one gather: rows[i, y] = (y - dy_i) mod side.
    coords = torch.arange(side)
    rows = (coords[None, :] - shifts[:, :1]) % side
    cols = (coords[None, :] - shifts[:, 1:]) % side
    shifted = patterns[
        labels[:, None, None, None],
        torch.arange(3)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    images = ((shifted + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(
        images=images,
        labels=labels.to(torch.int64),
        classes=[f"class{i}" for i in range(SYNTHETIC_CLASSES)],
        name=f"synthetic/{split}",
    )
