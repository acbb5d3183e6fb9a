"""A user's own folder (``simclrv2 pipeline --data``): every bad input of issue 14 gets a clear error before
any work (the run directory is never created), or, under ``data.bad_images=skip``, a warning that counts
what was left out, and the run goes on without it."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from faultkit import DATA, FaultLog, error_line, sets
from PIL import Image

from simclrv2.cli import main
from simclrv2.data import load_dataset
from simclrv2.data.datasets import BadImagesWarning
from simclrv2.engine.folder import folder_pipeline


def _png(path: Path, mode: str = "RGB", size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16)).save(path)
    else:
        img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
        img.save(path)
    return path


def _folder(root: Path, per_class: int = 3, pool: int = 12) -> Path:
    for c in ("a", "b"):
        for i in range(per_class):
            _png(root / "labeled" / c / f"{c}{i}.png", seed=hash((c, i)) % 997)
    for i in range(pool):
        _png(root / "unlabeled" / f"u{i}.png", seed=100 + i)
    return root


def _csv_folder(root: Path, rows: str, test_rows: str | None = None) -> Path:
    for i in range(4):
        _png(root / "img" / f"l{i}.png", seed=i)
    for i in range(16):
        _png(root / "pool" / f"p{i}.png", seed=50 + i)
    (root / "labels.csv").write_text(
        "path,label\nimg/l0.png,a\nimg/l1.png,a\nimg/l2.png,b\nimg/l3.png,b\n" + rows
    )
    if test_rows is not None:
        (root / "test.csv").write_text(test_rows)
    return root


def _fails(root: Path, run: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    argv = ["pipeline", "--data", str(root), *sets(f"run_dir={run}", *extra)]
    assert main(argv) == 2
    assert not run.exists()  # stopped before any work
    return error_line(capsys.readouterr().err, "pipeline")


def _bomb_png(path: Path, side: int = 20_000) -> Path:
    """A PNG header claiming side x side pixels (4e8 > 2x PIL's limit): a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return path


def test_corrupt_truncated_and_bomb_images_fail_listing_them_or_are_skipped_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    root = _folder(tmp_path / "data")
    bad = [
        _truncated_jpeg(root / "unlabeled" / "cut.jpg"),
        _bomb_png(root / "unlabeled" / "bomb.png"),
        root / "unlabeled" / "text.png",
        root / "labeled" / "a" / "noise.jpg",
    ]
    bad[2].write_text("not an image")
    bad[3].write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    err = _fails(root, tmp_path / "r1", capsys)
    assert "4 of 22 image files cannot be read" in err and "data.bad_images=skip" in err, err
    assert all(str(p) in err for p in bad) and "decompression bomb" in err and "truncated" in err
    fault.record(
        DATA,
        "folder: corrupt, truncated (JPEG cut in its scan data), decompression-bomb and non-image files "
        "with image extensions (bad_images=fail)",
        "clear error (exit 2) before any work, listing them and the skip flag",
        len(bad),
    )
    with pytest.warns(BadImagesWarning, match="skipped 4 of 22 unreadable image files"):
        pipe = folder_pipeline(root, None, sets_list(f"run_dir={tmp_path / 'r2'}", "data.bad_images=skip"))
    assert len(pipe.splits.unlabeled) == 12 and len(pipe.splits.skipped) == 4
    assert "4 unreadable files left out" in "\n".join(pipe.recipe)
    _pretrain_one_step(root, tmp_path / "r3", "data.bad_images=skip")
    fault.record(
        DATA,
        "folder: the same files (bad_images=skip)",
        "handled: left out before any work, counted in a warning naming them and in the report; training ran",
        len(bad),
    )


def sets_list(*items: str) -> list[str]:
    return list(items)


def _pretrain_one_step(root: Path, run: Path, *extra: str) -> None:
    """One pretraining step on the folder, through the stage's own command (the pipeline runs it so)."""
    settings = [
        "data.name=folder", f"data.root={root}", f"run_dir={run}", "model.backbone=r18_0.125x_sk0",
        "batch_size=4", "epochs=1", "max_steps=1", "optim.warmup_epochs=0", "precision=fp32", "device=cpu",
        "data.load_size=16", "data.image_size=16", "eval.knn_every_epochs=0", "data.num_workers=0", *extra,
    ]  # fmt: skip
    assert main(["pretrain", *sets(*settings)]) == 0
    assert (run / "last.pt").is_file()


def test_odd_modes_exif_rotation_small_images_and_non_image_files_are_handled_and_said(
    tmp_path: Path, fault: FaultLog
) -> None:
    root = _folder(tmp_path / "data", pool=0)
    modes = {
        "CMYK": "cmyk.jpg",
        "I;16": "sixteen.png",
        "P": "palette.png",
        "RGBA": "alpha.png",
        "LA": "la.png",
    }
    for i, (mode, name) in enumerate(modes.items()):
        _png(root / "unlabeled" / name, mode=mode, seed=i)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored 30 x 18, displayed rotated: 18 wide, 30 high
    Image.fromarray(np.zeros((18, 30, 3), dtype=np.uint8)).save(root / "unlabeled" / "rot.jpg", exif=exif)
    _png(root / "unlabeled" / "tiny.png", size=(6, 5))
    (root / "unlabeled" / "README.txt").write_text("notes")
    (root / "labeled" / "a" / "labels.xlsx").write_bytes(b"PK")
    for i in range(4):
        _png(root / "unlabeled" / f"u{i}.png", seed=40 + i)
    with pytest.warns(BadImagesWarning) as warned:
        pool = load_dataset("folder", "unlabeled", root=root, image_size=16, cache_gb=0)
    messages = " ".join(str(w.message) for w in warned)
    assert "ignored 1 files" in messages and "README.txt" in messages and "labels.xlsx" in messages
    assert "smaller than the load size 16 px" in messages and "tiny.png" in messages
    assert pool.dataset is not None and len(pool) == 11
    files = pool.dataset.dataset  # type: ignore[attr-defined]  # the pool is a view of the train split
    names = [Path(str(p)).name for p in files.paths]
    rot = names.index("rot.jpg")
    assert tuple(files.sizes[rot]) == (30, 18)
    for i in range(len(files)):
        image, _ = files[i]
        crop, _ = files[(i, -1, 0.0, 0.0, 1.0, 1.0, False, 8)]
        assert image.shape == (3, 16, 16) and crop.shape == (3, 8, 8) and image.dtype == torch.uint8
    assert files[names.index("sixteen.png")][0].float().std() > 20  # scaled from 16 bits
    _pretrain_one_step(root, tmp_path / "run")
    fault.record(
        DATA,
        f"folder: image modes {', '.join(modes)}, an EXIF-rotated JPEG",
        "handled: decoded to RGB (16-bit scaled, palette transparency via RGBA, alpha dropped), rotated as "
        "displayed (its crop boxes use the displayed size); training ran",
        len(modes) + 1,
    )
    fault.record(DATA, "folder: images smaller than the crop", "handled: upscaled, counted in a warning")
    fault.record(DATA, "folder: non-image files", "handled: ignored, counted in a warning", 2)


def test_labels_csv_rows_naming_missing_or_outside_files_or_listed_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    outside = _png(tmp_path / "elsewhere" / "x.png")
    cases = {
        "labels.csv rows naming missing files (bad_images=fail)": (
            "img/gone.png,a\npool/nothere.png,b\n", None, ["2 of 6 rows of labels.csv name missing files",
                                                       "line 6 of labels.csv", "data.bad_images=skip"],
        ),
        "labels.csv rows naming files outside the folder (.., absolute path, a symlink out)": (
            f"../elsewhere/x.png,a\n{outside},b\nlink.png,a\n", None, ["3 rows name files outside",
                                                                        "copy the images into the folder"],
        ),
        "labels.csv listing an image twice with different labels": (
            "img/l0.png,b\n", None, ["listed twice with different labels", "img/l0.png: 'a' (line 2)"],
        ),
        "labels.csv rows that are not path,label": ("img/l0.png\n", None, ["bad rows", "path,label"]),
        "test.csv with a class unknown to labels.csv": ("", "pool/p0.png,zebra\n", ["test.csv has", "zebra"]),
        "an image in both labels.csv and test.csv": ("", "img/l1.png,a\n", ["in both labels.csv and test"]),
    }  # fmt: skip
    for i, (case, (rows, test_rows, messages)) in enumerate(cases.items()):
        root = _csv_folder(tmp_path / f"csv{i}", rows, test_rows)
        if "symlink" in case:
            os.symlink(outside, root / "link.png")
        err = _fails(root, tmp_path / f"run{i}", capsys)
        assert all(m in err for m in messages), (case, err)
        fault.record(
            DATA, f"folder: {case}", "clear error (exit 2) before any work, naming the rows and the fix"
        )

    root = _csv_folder(tmp_path / "skip", "img/gone.png,a\n")
    with pytest.warns(BadImagesWarning, match="skipped 1 of 5 rows of labels.csv naming missing files"):
        pipe = folder_pipeline(root, None, [f"run_dir={tmp_path / 'rs'}", "data.bad_images=skip"])
    assert len(pipe.splits.labeled_train) + len(pipe.splits.validation) == 4
    fault.record(DATA, "folder: labels.csv rows naming missing files (bad_images=skip)",
                 "handled: rows left out, counted in a warning naming them")  # fmt: skip

    root = _csv_folder(tmp_path / "dup", "img/l0.png,a\nimg/l0.png,a\n")
    with pytest.warns(BadImagesWarning, match="2 duplicate rows"):
        pipe = folder_pipeline(root, None, [f"run_dir={tmp_path / 'rd'}"])
    assert len(pipe.splits.labeled_train) + len(pipe.splits.validation) == 4
    fault.record(DATA, "folder: labels.csv with duplicate rows (same path and label)",
                 "handled: counted once, said in a warning")  # fmt: skip

    root = _csv_folder(tmp_path / "latin", "")
    (root / "labels.csv").write_bytes("path,label\nimg/l0.png,caf\xe9\n".encode("latin-1"))
    err = _fails(root, tmp_path / "rl", capsys)
    assert "labels.csv is not UTF-8" in err and "save it as UTF-8" in err
    fault.record(DATA, "folder: labels.csv not UTF-8", "clear error (exit 2) naming the file and the fix")


def test_layout_problems_unknown_test_classes_empty_pool_and_names_that_are_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    root = _folder(tmp_path / "d1")
    _png(root / "test" / "zebra" / "z.png")
    err = _fails(root, tmp_path / "r1", capsys)
    assert "classes that" in err and "zebra" in err and "add labeled images" in err
    fault.record(DATA, "folder: a test class unknown to the labeled set",
                 "clear error (exit 2) before any work, naming the class and the fix")  # fmt: skip

    root = _folder(tmp_path / "d2", pool=0)
    err = _fails(root, tmp_path / "r2", capsys)
    assert "unlabeled pool is empty" in err and "unlabeled/" in err
    fault.record(
        DATA, "folder: an empty unlabeled pool", "clear error (exit 2) before any work, naming the fix"
    )

    root = _folder(tmp_path / "d3")
    bad_name = os.path.join(os.fsencode(root / "unlabeled"), b"caf\xe9.png")
    with open(bad_name, "wb") as f:
        f.write((root / "unlabeled" / "u0.png").read_bytes())
    err = _fails(root, tmp_path / "r3", capsys)
    assert "names that are not UTF-8" in err and "caf\\xe9.png" in err and "convmv" in err
    with pytest.warns(BadImagesWarning, match="skipped 1 of .* files with names that are not UTF-8"):
        pipe = folder_pipeline(root, None, [f"run_dir={tmp_path / 'r3s'}", "data.bad_images=skip"])
    assert len(pipe.splits.unlabeled) == 12
    fault.record(DATA, "folder: file names that are not UTF-8 (bad_images=fail)",
                 "clear error (exit 2) before any work, listing them and a fix")  # fmt: skip
    fault.record(DATA, "folder: file names that are not UTF-8 (bad_images=skip)",
                 "handled: left out, counted in a warning")  # fmt: skip

    both = _folder(tmp_path / "d4")
    (both / "labels.csv").write_text("path,label\n")
    assert "both labels.csv and labeled/" in _fails(both, tmp_path / "r4", capsys)
    none = tmp_path / "d5"
    _png(none / "train" / "a" / "x.png")
    err = _fails(none, tmp_path / "r5", capsys)
    assert "no labeled images found" in err and "rename train/ to labeled/" in err
    single = _folder(tmp_path / "d6")
    for p in (single / "labeled" / "b").iterdir():
        p.unlink()
    (single / "labeled" / "b").rmdir()
    assert "at least 2 classes" in _fails(single, tmp_path / "r6", capsys)
    fault.record(DATA, "folder: both layouts at once, neither, a single class",
                 "clear error (exit 2) before any work, naming the layouts and the fix", 3)  # fmt: skip

    root = _folder(tmp_path / "d7")
    err = _fails(root, root / "runs" / "x", capsys)
    assert "inside the data folder" in err
    fault.record(DATA, "folder: run_dir inside the data folder",
                 "clear error (exit 2) before any work (figures would become training images)")  # fmt: skip

    few = _folder(tmp_path / "d8", per_class=1, pool=1)
    with pytest.warns(BadImagesWarning) as warned:
        folder_pipeline(few, None, [f"run_dir={tmp_path / 'r8'}", "pretrain.batch_size=2"])
    text = " ".join(str(w.message) for w in warned)
    assert "fewer than 2 labeled images" in text and "smaller than the labeled set" in text and "Fix" in text
    fault.record(DATA, "folder: classes with < 2 labeled images; a pool smaller than the labeled set",
                 "handled: a warning each, naming the fix", 2)  # fmt: skip
