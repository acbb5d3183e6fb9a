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

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder", "synthetic")

SPLITS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("train", "test"),
    "cifar10": ("train", "test"),
    "cifar100": ("train", "test"),
    "stl10": ("train", "test", "unlabeled", "train+unlabeled"),
    "imagefolder": ("train", "test", "val"),
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
    """

    images: Tensor | None
    labels: Tensor
    classes: list[str]
    dataset: Dataset | None = None
    name: str = ""

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
        bad_images: imagefolder: ``fail`` on unreadable image files (listing them) or ``skip`` them with a
            warning (see :func:`load_imagefolder`).
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
    return make_synthetic(split, synthetic_size, image_size, seed)


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


def decode_rgb(path: str | Path, min_size: int | None = None) -> Tensor:
    """Decode an image file to uint8 (3, H, W) RGB, whatever its mode (gray, palette, RGBA, 16-bit).

    PIL rather than torchvision.io: torchvision's decoders are deprecated since 0.29 (in favour of
    TorchCodec, not a dependency here), and PIL reads BMP too. With `min_size`, JPEGs are decoded at a
    reduced DCT scale that keeps both sides >= min_size (``Image.draft``): several times faster on large
    photos that are about to be downscaled anyway.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as opened:
        if min_size is not None:
            opened.draft("RGB", (min_size, min_size))
        img = ImageOps.exif_transpose(opened)  # camera photos: apply the stored orientation
        if img.mode.startswith("I;16"):  # 16-bit gray: PIL's RGB conversion would clip at 255
            img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
        elif img.mode == "I":  # 32-bit int gray, in practice 16-bit data
            arr = np.asarray(img, dtype=np.int64)
            img = Image.fromarray((arr >> 8 if arr.max() > 255 else arr).clip(0, 255).astype(np.uint8))
        rgb = np.asarray(img.convert("RGB"))
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


class ImageFolderDataset(Dataset):
    """Image files decoded on access to RGB uint8 (3, size, size): shorter side resized, centre-cropped.

    Decoding happens in DataLoader workers. Paths and labels are two numpy arrays rather than a list of
    tuples: millions of small Python objects would be copied page by page into every forked worker as
    reference counts touch them (the "copy-on-read" memory growth of PyTorch issue #13246).
    """

    def __init__(self, samples: list[tuple[str, int]], image_size: int, bad_images: str = "fail") -> None:
        self.paths = np.array([path for path, _ in samples], dtype=np.str_)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.image_size = image_size
        self.image_shape = (3, image_size, image_size)
        self.bad_images = bad_images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from torchvision.transforms.v2 import functional as F

        # The header scan before training catches most bad files; one that only fails to decode (a truncated
        # JPEG) stops the run with its path (``fail``) or is replaced by the next readable image (``skip``:
        # deterministic, so resume stays exact).
        for attempt in range(min(len(self), 100)):
            i = (index + attempt) % len(self)
            path = str(self.paths[i])
            try:
                image = decode_rgb(path, min_size=self.image_size)
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
        index = i
        size = self.image_size
        image = F.resize(image, [size], antialias=True)  # one int: the shorter side becomes `size`
        image = F.center_crop(image, [size, size])
        return image.contiguous(), int(self.labels[index])


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


def probe_image(path: str) -> tuple[str, tuple[int, int]] | str:
    """(mode, (width, height)) from the file's header, or the reason it is not a readable image.

    Reads the header only (PIL opens lazily), so scanning a large folder costs about one small read per file;
    PNGs are also checked chunk by chunk (``verify``), which catches truncated ones."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            if img.format == "PNG":
                img.verify()
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    if size[0] < 1 or size[1] < 1:
        return f"empty image {size[0]}x{size[1]}"
    return mode, size


def scan_images(files: list[str], policy: str, load_size: int) -> list[str]:
    """The readable files of ``files`` (header scan, threads for large folders), before any training.

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
    small = [
        f for f, p in zip(files, probes, strict=True) if not isinstance(p, str) and min(p[1]) < load_size
    ]
    if bad:
        listed = "; ".join(f"{f} ({why})" for f, why in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        if policy == "fail":
            raise BadImagesError(
                f"{len(bad)} of {len(files)} image files cannot be read: {listed}{more}. Fix: remove or "
                "repair them, or leave them out with --set data.bad_images=skip"
            )
        warnings.warn(
            f"skipped {len(bad)} of {len(files)} unreadable image files (data.bad_images=skip): "
            f"{listed}{more}",
            BadImagesWarning,
            stacklevel=3,
        )
    if small:
        warnings.warn(
            f"{len(small)} of {len(files)} images are smaller than the load size {load_size} px and are "
            f"upscaled, e.g. {', '.join(small[:3])} (lower data.load_size to avoid it)",
            BadImagesWarning,
            stacklevel=3,
        )
    bad_set = {f for f, _ in bad}
    return [f for f in files if f not in bad_set]


def load_imagefolder(
    split: str, root: str | Path | None, image_size: int | None = None, bad_images: str = "fail"
) -> ImageData:
    """Images in ``root/{train,test}/<class>/*`` (``val`` may replace ``test``), streamed.

    Class names are the sorted union of the class folders of both splits, so that a label means the same
    class in train and test even if one split lacks a class. Every file's header is read before training
    (:func:`scan_images`): unreadable files stop the run or, with ``bad_images="skip"``, are left out; files
    that are not images by their extension are ignored with a warning.
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
    readable = set(scan_images([f for f, _ in samples], bad_images, size))
    samples = [(f, label) for f, label in samples if f in readable]
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
        dataset=ImageFolderDataset(samples, size, bad_images),
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
