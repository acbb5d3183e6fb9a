"""Messy data: missing datasets, empty folders, non-image files, corrupt and truncated images, odd image
modes, images smaller than the crop. Each gets one clear line before any training (or is handled and said)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import DATA, FaultLog, error_line, sets
from PIL import Image

from simclrv2.cli import main
from simclrv2.data import datasets
from simclrv2.data.datasets import BadImagesWarning, load_dataset

# One pretraining step on an image folder (16-px loads, the smallest model), no test split.
FOLDER_PRETRAIN = [
    "data.name=imagefolder",
    "data.load_size=16",
    "data.num_workers=0",
    "model.backbone=r18_0.125x_sk0",
    "batch_size=4",
    "epochs=1",
    "max_steps=1",
    "optim.warmup_epochs=0",
    "precision=fp32",
    "device=cpu",
    "log_every_steps=1",
]


def _png(path: Path, mode: str = "RGB", size: tuple[int, int] = (20, 20), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16)).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _folder(root: Path, per_class: int = 4, classes: tuple[str, ...] = ("a", "b")) -> Path:
    for c in classes:
        for i in range(per_class):
            _png(root / "train" / c / f"{c}{i}.png", seed=hash((c, i)) % 1000)
    return root


def _pretrain(root: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", *sets(*FOLDER_PRETRAIN, f"data.root={root}", f"run_dir={run}", *extra)]


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return error_line(capsys.readouterr().err, argv[0])


def test_missing_datasets_and_empty_folders_name_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    run = tmp_path / "run"
    cases = {
        "missing dataset: Fashion-MNIST not installed": (
            ["data.name=fashion-mnist", f"data.root={tmp_path / 'nowhere'}"],
            ["Fashion-MNIST not found", "data.download=true"],
        ),
        "missing dataset: CIFAR-10 root without the files": (
            ["data.name=cifar10", f"data.root={tmp_path}"],
            ["cifar10 not found", "data_batch_1", "data.download=true"],
        ),
        "missing dataset: STL-10 root without the files": (
            ["data.name=stl10", f"data.root={tmp_path}"],
            ["stl10 not found", "data.download=true"],
        ),
        "wrong path: image-folder root does not exist": (
            ["data.name=imagefolder", f"data.root={tmp_path / 'typo'}"],
            ["does not exist", "train"],
        ),
    }
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    cases["image folder without class folders"] = (
        ["data.name=imagefolder", f"data.root={empty}"],
        ["no class folders", "<class>"],
    )
    no_split = tmp_path / "nosplit"
    no_split.mkdir()
    cases["image folder without a train/ split"] = (
        ["data.name=imagefolder", f"data.root={no_split}"],
        ["imagefolder split 'train'", "exists"],
    )
    hollow = _folder(tmp_path / "hollow")
    (hollow / "train" / "c").mkdir()
    (hollow / "train" / "d").mkdir()
    (hollow / "train" / "d" / "x.txt").write_text("notes")  # a class folder holding only a non-image file
    cases["class folders with no images (empty, or only non-image files)"] = (
        ["data.name=imagefolder", f"data.root={hollow}"],
        ["no images", ": c, d", "Remove the empty folders"],
    )
    for case, (settings, messages) in cases.items():
        err = _error(["pretrain", *sets(*FOLDER_PRETRAIN[1:], *settings, f"run_dir={run}")], capsys)
        assert all(m in err for m in messages), (case, err)
        assert not run.exists(), case  # stopped before any work
        fault.record(DATA, case, "clear error (exit 2) naming the fix, before any work")


def _corrupt_files(root: Path) -> list[Path]:
    """Files with image extensions that are not images: text, empty, random bytes, a truncated PNG."""
    bad = root / "train" / "a"
    (bad / "text.png").write_text("this is not an image")
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "noise.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    good = _png(bad / "cut.png", size=(64, 64)).read_bytes()
    (bad / "cut.png").write_bytes(good[: len(good) // 2])
    return [bad / n for n in ("text.png", "empty.jpg", "noise.jpg", "cut.png")]


def test_corrupt_images_fail_listing_them_or_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    root = _folder(tmp_path / "data")
    bad = _corrupt_files(root)
    err = _error(_pretrain(root, tmp_path / "r1"), capsys)
    assert "4 of 12 image files cannot be read" in err and "data.bad_images=skip" in err
    assert all(str(p) in err for p in bad), err
    assert not (tmp_path / "r1").exists()
    fault.record(
        DATA,
        "corrupt image files: text, empty, random bytes, truncated PNG (bad_images=fail)",
        "clear error (exit 2) listing the files and the skip flag",
        len(bad),
    )

    with pytest.warns(BadImagesWarning, match="skipped 4 of 12 unreadable image files") as warned:
        assert main(_pretrain(root, tmp_path / "r2", "data.bad_images=skip")) == 0
    assert all(str(p) in str(warned[0].message) for p in bad)
    assert (tmp_path / "r2" / "last.pt").is_file()
    with pytest.warns(BadImagesWarning):
        data = load_dataset("imagefolder", "train", root=root, image_size=16, bad_images="skip")
    assert len(data) == 8
    fault.record(
        DATA,
        "corrupt image files (bad_images=skip)",
        "handled: left out, counted in a warning listing them; training ran",
        len(bad),
    )


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG cut inside its scan data: the header reads fine, decoding fails."""
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return path


def test_a_truncated_jpeg_is_caught_by_the_scan_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    """A JPEG cut inside its scan data has a readable header; its missing end marker gives it away, and the
    scan decodes it to be sure (files with bytes after the marker are not suspected)."""
    root = _folder(tmp_path / "data", per_class=2)
    cut = _truncated_jpeg(root / "train" / "a" / "a9.jpg")
    err = _error(_pretrain(root, tmp_path / "r1", "batch_size=4"), capsys)
    assert "1 of 5 image files cannot be read" in err and str(cut) in err and "truncated" in err, err
    assert not (tmp_path / "r1").exists()
    fault.record(
        DATA,
        "truncated JPEG (header readable, scan data cut) (bad_images=fail)",
        "clear error (exit 2) before any work, naming the file and the skip flag",
    )
    with pytest.warns(BadImagesWarning, match="skipped 1 of 5 unreadable image files"):
        assert main(_pretrain(root, tmp_path / "r2", "batch_size=4", "data.bad_images=skip")) == 0
    fault.record(
        DATA,
        "truncated JPEG (bad_images=skip)",
        "handled: left out before training, counted in a warning naming it; training ran",
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_fails_only_when_decoded_stops_with_its_path_or_is_replaced(
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fault: FaultLog,
    workers: int,
) -> None:
    """Damage the scan cannot see (simulated: the end-marker check is told the truncated JPEG is whole).
    capfd: the warning of a worker process is written to the inherited file descriptor."""
    monkeypatch.setattr(datasets, "_ends_with_jpeg_marker", lambda path: True)
    root = _folder(tmp_path / "data", per_class=2)
    cut = _truncated_jpeg(root / "train" / "a" / "a9.jpg")
    run = ["batch_size=5", f"data.num_workers={workers}"]  # one batch holds every image
    err = _error(_pretrain(root, tmp_path / "r1", *run), capfd)
    assert f"cannot decode image {cut}" in err and "data.bad_images=skip" in err, err
    where = "in a DataLoader worker" if workers else "in the main process"
    fault.record(
        DATA,
        f"image whose damage only decoding finds, {where} (bad_images=fail)",
        "clear error (exit 2) naming the file and the skip flag",
    )

    assert main(_pretrain(root, tmp_path / "r2", *run, "data.bad_images=skip")) == 0
    assert f"skipping unreadable image {cut}" in capfd.readouterr().err
    data = load_dataset("imagefolder", "train", root=root, image_size=16, bad_images="skip")
    assert data.dataset is not None
    index = [str(p) for p in data.dataset.paths].index(str(cut))  # type: ignore[attr-defined]
    image, label = data.dataset[index]
    assert image.shape == (3, 16, 16) and label == int(data.labels[(index + 1) % len(data)])
    fault.record(
        DATA,
        f"image whose damage only decoding finds, {where} (bad_images=skip)",
        "handled: replaced by the next readable image (deterministic); warning names it",
    )


def test_mixed_image_modes_are_converted_to_rgb_and_train(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    root = tmp_path / "data"
    modes = {"L": "gray.png", "RGBA": "alpha.png", "I;16": "sixteen.png", "P": "palette.png", "1": "bw.png"}
    modes |= {"CMYK": "cmyk.jpg", "LA": "gray_alpha.png", "RGB": "rgb.png"}
    for i, (mode, name) in enumerate(modes.items()):
        _png(root / "train" / ("a" if i % 2 else "b") / name, mode=mode, seed=i)
    data = load_dataset("imagefolder", "train", root=root, image_size=16)
    assert data.dataset is not None
    for i in range(len(data)):
        image, _ = data.dataset[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    paths = [Path(str(p)).name for p in data.dataset.paths]  # type: ignore[attr-defined]
    sixteen = data.dataset[paths.index("sixteen.png")][0]
    assert sixteen.float().std() > 20  # scaled from 16 bits, not clipped to white
    assert main(_pretrain(root, tmp_path / "run")) == 0
    fault.record(
        DATA,
        f"image modes mixed in one folder: {', '.join(modes)}",
        "handled: all decoded to 3-channel RGB (16-bit scaled); training ran",
        len(modes),
    )


def test_non_image_files_and_small_images_are_handled_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    root = _folder(tmp_path / "data", per_class=3)
    (root / "train" / "a" / "README.txt").write_text("notes")
    (root / "train" / "b" / "labels.csv").write_text("x,y")
    tiny = _png(root / "train" / "b" / "tiny.png", size=(5, 7))
    with pytest.warns(BadImagesWarning) as warned:
        assert main(_pretrain(root, tmp_path / "run")) == 0
    messages = [str(w.message) for w in warned]
    assert any("ignored 2 files" in m and "not images" in m for m in messages), messages
    assert any("1 of 7 images are smaller than the load size 16 px" in m and str(tiny) in m for m in messages)
    fault.record(
        DATA,
        "non-image files (README.txt, labels.csv) in class folders",
        "handled: ignored, counted in a warning",
        2,
    )
    fault.record(
        DATA,
        "images smaller than the load size (5x7 px for 16 px)",
        "handled: upscaled, counted in a warning naming them",
    )

    err = _error(_pretrain(root, tmp_path / "r2", "data.image_size=32"), capsys)
    assert "data.image_size=32 (the crop) is larger than data.load_size=16" in err, err
    fault.record(
        DATA,
        "crop larger than the loaded images (data.image_size > data.load_size)",
        "clear error (exit 2) naming both keys and a fix",
    )
