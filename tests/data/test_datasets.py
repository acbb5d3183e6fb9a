"""Dataset readers on the real Fashion-MNIST and on small files written in each standard format."""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.data import datasets
from simclrv2.data.datasets import DATASETS, ImageData, find_fashion_mnist, load_dataset, read_idx
from simclrv2.data.loader import BatchLoader

SYSTEM_FMNIST = datasets.FASHION_MNIST_SYSTEM_DIR


@pytest.fixture
def no_system_fmnist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")


# ---------------------------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.fashion_mnist
def test_fashion_mnist_from_debian_path() -> None:
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert find_fashion_mnist(None) == SYSTEM_FMNIST
    assert len(train) == 60000 and len(test) == 10000
    assert train.in_memory and train.images is not None and test.images is not None
    assert train.images.dtype == torch.uint8 and train.image_shape == (1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert len(train.classes) == 10 and train.classes[9] == "Ankle boot"
    assert train.labels.dtype == torch.int64
    assert train.labels.min() == 0 and train.labels.max() == 9
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert int(train.labels[0]) == 9  # the first training image is an ankle boot
    assert train.images.float().mean() > 50  # real pixels, not zeros


@pytest.mark.fashion_mnist
def test_fashion_mnist_from_root_uncompressed(tmp_path: Path, no_system_fmnist: None) -> None:
    raw = tmp_path / "FashionMNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    for gz in SYSTEM_FMNIST.glob("t*-idx?-ubyte.gz"):
        (raw / gz.name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
    assert find_fashion_mnist(tmp_path) == raw
    test = load_dataset("fashion-mnist", "test", root=tmp_path)
    reference = read_idx(SYSTEM_FMNIST / "t10k-images-idx3-ubyte.gz")
    assert test.images is not None and test.images.shape == (10000, 1, 28, 28)
    assert torch.equal(test.images[:, 0], torch.from_numpy(reference.copy()))


@pytest.mark.fashion_mnist
def test_fashion_mnist_root_itself_gzipped(tmp_path: Path, no_system_fmnist: None) -> None:
    for gz in SYSTEM_FMNIST.glob("*.gz"):
        shutil.copy(gz, tmp_path / gz.name)
    assert find_fashion_mnist(tmp_path) == tmp_path
    assert len(load_dataset("fashion-mnist", "test", root=tmp_path)) == 10000


def test_fashion_mnist_missing_gives_fix(tmp_path: Path, no_system_fmnist: None) -> None:
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("fashion-mnist", "train", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message and "not-installed" in message
    assert "apt-get install dataset-fashion-mnist" in message and "data.download=true" in message


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_bad_magic(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x", array)
    assert np.array_equal(read_idx(tmp_path / "x"), array)
    (tmp_path / "x.gz").write_bytes(gzip.compress((tmp_path / "x").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "x").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


# ------------------------------------------------------------------------------------- names and splits


def test_unknown_name_and_split() -> None:
    with pytest.raises(ValueError, match=r"'mnist'.*fashion-mnist, cifar10"):
        load_dataset("mnist", "train")
    with pytest.raises(ValueError, match=r"'unlabeled'.*train, test"):
        load_dataset("cifar10", "unlabeled")
    assert set(DATASETS) == {
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "stl10",
        "imagefolder",
        "folder",
        "synthetic",
    }


# ---------------------------------------------------------------------------------------------- CIFAR


@pytest.fixture
def skip_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision compares every file's md5 with the official release's, so files written by a test never
    # pass; the readers themselves are what is under test.
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(torchvision.datasets.stl10, "check_integrity", lambda *args, **kwargs: True)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_cifar10_pickle_batches(tmp_path: Path, skip_md5: None) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _pickle(folder / "batches.meta", {"label_names": names})
    written = []
    for i, batch in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = _random_images(3, 32, seed=i)
        labels = [(i + j) % 10 for j in range(3)]
        # The official layout: one row of 3072 bytes per image, R plane then G then B, each row-major.
        _pickle(folder / batch, {"data": images.reshape(3, -1), "labels": labels})
        written.append((images, labels))
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert train.images is not None and test.images is not None
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, torch.from_numpy(np.concatenate([w[0] for w in written[:5]])))
    assert train.labels.tolist() == [label for w in written[:5] for label in w[1]]
    assert torch.equal(test.images, torch.from_numpy(written[5][0])) and test.labels.tolist() == written[5][1]
    assert train.classes == names and train.image_shape == (3, 32, 32)


def test_cifar100_pickle(tmp_path: Path, skip_md5: None) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    images = _random_images(4, 32, seed=7)
    for split in ("train", "test"):
        _pickle(
            folder / split,
            {"data": images.reshape(4, -1), "fine_labels": [99, 0, 5, 42], "coarse_labels": [0] * 4},
        )
    data = load_dataset("cifar100", "test", root=tmp_path)
    assert data.images is not None and torch.equal(data.images, torch.from_numpy(images))
    assert data.labels.tolist() == [99, 0, 5, 42] and len(data.classes) == 100


def test_cifar_missing_names_files_and_fix(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"cifar-10-batches-py lacks data_batch_1.*data\.download=true"
    ):
        load_dataset("cifar10", "train", root=tmp_path)


# ---------------------------------------------------------------------------------------------- STL-10


def test_stl10_binary(tmp_path: Path, skip_md5: None) -> None:
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    parts = {
        "train": _random_images(3, 96, 1),
        "test": _random_images(2, 96, 2),
        "unlabeled": _random_images(4, 96, 3),
    }
    for split, images in parts.items():
        # The binary release stores each channel column-major (hence torchvision's transpose back).
        (folder / f"{split}_X.bin").write_bytes(np.transpose(images, (0, 1, 3, 2)).tobytes())
    (folder / "train_y.bin").write_bytes(bytes([1, 10, 4]))  # 1-based
    (folder / "test_y.bin").write_bytes(bytes([2, 3]))

    train = load_dataset("stl10", "train", root=tmp_path)
    assert train.images is not None and train.images.shape == (3, 3, 96, 96) and train.images.is_contiguous()
    assert torch.equal(train.images, torch.from_numpy(parts["train"]))
    assert train.labels.tolist() == [0, 9, 3] and train.classes == datasets.STL10_CLASSES
    unlabeled = load_dataset("stl10", "unlabeled", root=tmp_path)
    assert unlabeled.images is not None and torch.equal(
        unlabeled.images, torch.from_numpy(parts["unlabeled"])
    )
    assert unlabeled.labels.tolist() == [-1] * 4
    both = load_dataset("stl10", "train+unlabeled", root=tmp_path)
    assert len(both) == 7 and both.labels.tolist() == [0, 9, 3, -1, -1, -1, -1]
    test = load_dataset("stl10", "test", root=tmp_path)
    assert test.labels.tolist() == [1, 2] and test.image_shape == (3, 96, 96)


def test_stl10_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"stl10_binary lacks train_X\.bin"):
        load_dataset("stl10", "train", root=tmp_path)


# ------------------------------------------------------------------------------------------- image folders


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    _save(tmp_path / "train" / "cat" / "a.png", rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    _save(tmp_path / "train" / "cat" / "b.PNG", rng.integers(0, 256, (50, 30), dtype=np.uint8))  # gray
    _save(tmp_path / "train" / "dog" / "c.png", rng.integers(0, 256, (20, 20, 4), dtype=np.uint8))  # RGBA
    _save(tmp_path / "train" / "dog" / "d.jpg", rng.integers(0, 256, (33, 47, 3), dtype=np.uint8))
    _save(tmp_path / "train" / "dog" / "e.bmp", rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    sixteen = (rng.integers(0, 65536, (30, 30)) // 256 * 256).astype(np.uint16)  # 16-bit gray, high byte only
    _save(tmp_path / "train" / "emu" / "f.png", sixteen)
    (tmp_path / "train" / "emu" / "notes.txt").write_text("not an image")
    _save(tmp_path / "val" / "dog" / "g.webp", rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    return tmp_path


# the fixture's notes.txt and small image are there on purpose (the warnings are tested elsewhere)
@pytest.mark.filterwarnings("ignore::simclrv2.data.datasets.BadImagesWarning")
def test_imagefolder_decodes_to_fixed_rgb(image_root: Path) -> None:
    train = load_dataset("imagefolder", "train", root=image_root, image_size=16)
    assert not train.in_memory and train.images is None and train.dataset is not None
    assert train.classes == ["cat", "dog", "emu"] and train.image_shape == (3, 16, 16)
    assert train.labels.tolist() == [0, 0, 1, 1, 1, 2]
    for i in range(len(train)):
        image, label = train.dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16) and label == train.labels[i]
    gray, _ = train.dataset[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    sixteen, _ = train.dataset[5]
    assert sixteen.float().std() > 20  # scaled from 16 bits, not clipped to white
    test = load_dataset("imagefolder", "test", root=image_root)  # val/ stands in for test/
    assert test.classes == train.classes and test.labels.tolist() == [1]
    assert test.image_shape == (3, 256, 256) and test.dataset is not None
    assert test.dataset[0][0].shape == (3, 256, 256)
    batches = list(BatchLoader(train, batch_size=4, shuffle=False, drop_last=False, num_workers=0).epoch(0))
    assert [tuple(images.shape) for images, _ in batches] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    assert torch.cat([labels for _, labels in batches]).tolist() == train.labels.tolist()


def test_imagefolder_centre_crop_of_resized_shorter_side(tmp_path: Path) -> None:
    stripes = np.zeros((20, 40, 3), dtype=np.uint8)
    stripes[:, 8:32] = 255  # the centre is white, the sides black (a margin for the antialiasing filter)
    _save(tmp_path / "train" / "a" / "x.png", stripes)
    image, _ = load_dataset("imagefolder", "train", root=tmp_path, image_size=10).dataset[0]  # type: ignore[index]
    assert image.shape == (3, 10, 10) and image.min() == 255


def test_large_jpeg_decoded_at_reduced_scale_still_fills_the_crop(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:480, 0:640]
    photo = np.stack([xx * 255 // 639, yy * 255 // 479, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    _save(tmp_path / "train" / "a" / "photo.jpg", photo)
    assert datasets.decode_rgb(tmp_path / "train" / "a" / "photo.jpg", min_size=64).shape[1:] >= (64, 64)
    image, _ = load_dataset("imagefolder", "train", root=tmp_path, image_size=64).dataset[0]  # type: ignore[index]
    assert image.shape == (3, 64, 64)
    # Centre crop of a horizontal ramp: red spans the middle 3/4 of its range, green all of it.
    assert 20 < int(image[0, 32, 0]) < 50 and 205 < int(image[0, 32, -1]) < 235
    assert int(image[1, 0, 32]) < 15 and int(image[1, -1, 32]) > 240


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a root"):
        load_dataset("imagefolder", "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagefolder", "train", root=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train"):
        load_dataset("imagefolder", "train", root=tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        load_dataset("imagefolder", "train", root=tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    _save(tmp_path / "train" / "full" / "x.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match=r"no images .* empty"):
        load_dataset("imagefolder", "train", root=tmp_path)


# ------------------------------------------------------------------------------------------------ synthetic


def test_synthetic_deterministic_shapes_balanced() -> None:
    a = load_dataset("synthetic", "train", seed=3)
    b = load_dataset("synthetic", "train", seed=3)
    assert a.images is not None and b.images is not None
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (512, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.bincount().tolist() == [52, 52] + [51] * 8
    small = load_dataset("synthetic", "test", synthetic_size=100, image_size=8, seed=3)
    assert small.images is not None and small.images.shape == (100, 3, 8, 8)
    assert small.labels.bincount().tolist() == [10] * 10 and len(small.classes) == 10
    other = load_dataset("synthetic", "train", seed=4)
    assert other.images is not None and not torch.equal(other.images, a.images)


def test_synthetic_is_learnable_and_splits_share_classes() -> None:
    # A nearest-class-mean classifier fitted on train must beat chance (10%) by far on test.
    train = load_dataset("synthetic", "train", seed=0)
    test = load_dataset("synthetic", "test", seed=0)
    assert train.images is not None and test.images is not None
    assert not torch.equal(train.images[:256], test.images)
    # Mean colour per class is shift-invariant, so it separates the classes despite the random shifts.
    features_train = train.images.float().mean(dim=(2, 3))
    features_test = test.images.float().mean(dim=(2, 3))
    means = torch.stack([features_train[train.labels == c].mean(0) for c in range(10)])
    predicted = torch.cdist(features_test, means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.8


def test_image_data_validates() -> None:
    labels = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="exactly one"):
        ImageData(images=None, labels=labels, classes=["a"])
    with pytest.raises(ValueError, match="uint8"):
        ImageData(images=torch.zeros(2, 3, 4, 4), labels=labels, classes=["a"])
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageData(images=torch.zeros(3, 3, 4, 4, dtype=torch.uint8), labels=labels, classes=["a"])
