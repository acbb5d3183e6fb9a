"""A user's own folder (simclrv2.data.user_folder): both layouts read correctly (which files are labeled,
unlabeled and test), the validation hold-out, and where the decoded images live (memory or stream)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.data import load_dataset
from simclrv2.data.datasets import BadImagesWarning
from simclrv2.data.subsets import label_fraction_indices, parse_label_spec
from simclrv2.data.user_folder import folder_splits, read_layout

pytestmark = pytest.mark.filterwarnings("ignore::simclrv2.data.datasets.BadImagesWarning")


def _img(path: Path, size: tuple[int, int] = (12, 10), seed: int = 0, mode: str = "RGB") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return str(path)


def _layout1(root: Path, test: bool = True) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {"labeled": [], "unlabeled": [], "test": []}
    for i, rel in enumerate(
        ["cat/a.png", "cat/b.png", "cat/c.jpg", "dog/d.png", "dog/sub/e.png", "dog/f.bmp"]
    ):
        files["labeled"].append(_img(root / "labeled" / rel, seed=i))
    for i, rel in enumerate(["x.png", "deep/er/y.jpg", "z.webp", "q/w.png"]):
        files["unlabeled"].append(_img(root / "unlabeled" / rel, seed=10 + i))
    (root / "unlabeled" / "notes.txt").write_text("not an image")
    (root / "unlabeled" / ".hidden.png").write_bytes(b"hidden files are not listed")
    if test:
        for i, rel in enumerate(["cat/t1.png", "dog/t2.png", "dog/t3.png"]):
            files["test"].append(_img(root / "test" / rel, seed=20 + i))
    return files


def test_layout_1_labeled_unlabeled_and_test_folders(tmp_path: Path) -> None:
    files = _layout1(tmp_path)
    layout = read_layout(tmp_path)
    assert layout.layout == "folders" and layout.test_source == "test/"
    assert layout.classes == ["cat", "dog"]
    assert sorted(f for f, _ in layout.labeled) == sorted(files["labeled"])
    assert {Path(f).name: c for f, c in layout.labeled} == {"a.png": 0, "b.png": 0, "c.jpg": 0, "d.png": 1,
                                                          "e.png": 1, "f.bmp": 1}  # fmt: skip
    assert sorted(layout.unlabeled) == sorted(files["unlabeled"])  # nested, no classes; txt/hidden left out
    assert sorted(f for f, _ in layout.test) == sorted(files["test"])
    assert any("notes.txt" in note for note in layout.notes)

    train = load_dataset("folder", "train", root=tmp_path)
    assert len(train) == 10 and train.labels.tolist() == [0, 0, 0, 1, 1, 1, -1, -1, -1, -1]
    test = load_dataset("folder", "test", root=tmp_path)
    assert test.eval_name == "test" and test.labels.tolist() == [0, 1, 1] and test.classes == ["cat", "dog"]
    assert len(load_dataset("folder", "labeled", root=tmp_path)) == 6
    pool = load_dataset("folder", "unlabeled", root=tmp_path)
    assert len(pool) == 4 and bool((pool.labels == -1).all())
    # the stages' "all" label spec picks exactly the labeled images of the train split
    assert label_fraction_indices(train.labels, "all").tolist() == [0, 1, 2, 3, 4, 5]
    assert str(parse_label_spec("all")) == "all"


def test_layout_1_without_test_holds_out_a_class_balanced_validation_part(tmp_path: Path) -> None:
    _layout1(tmp_path, test=False)
    splits = folder_splits(tmp_path, validation_fraction=0.4)
    assert splits.eval_name == "validation" and not splits.test
    assert splits.per_class(splits.validation) == {"cat": 1, "dog": 1}
    assert splits.per_class(splits.labeled_train) == {"cat": 2, "dog": 2}
    held = {f for f, _ in splits.validation}
    train = load_dataset("folder", "train", root=tmp_path, validation_fraction=0.4, cache_gb=0)
    assert len(train) == 8  # 4 labeled + 4 unlabeled: the validation images are in no training split
    assert train.dataset is not None
    paths = {str(p) for p in train.dataset.paths}  # type: ignore[attr-defined]
    assert len(paths) == 8 and not held & paths
    val = load_dataset("folder", "test", root=tmp_path, validation_fraction=0.4)
    assert val.eval_name == "validation" and val.name == "folder/validation" and len(val) == 2
    again = folder_splits(tmp_path, validation_fraction=0.4)
    assert {f for f, _ in again.validation} == held  # a function of the folder, not of a stage's seed


def test_layout_2_labels_csv_every_other_image_unlabeled_and_test_csv(tmp_path: Path) -> None:
    a = _img(tmp_path / "shots" / "2023" / "a.png", seed=1)
    b = _img(tmp_path / "shots" / "b.png", seed=2)
    c = _img(tmp_path / "c.jpg", seed=3)
    t = _img(tmp_path / "held" / "t.png", seed=4)
    pool = [_img(tmp_path / "shots" / f"u{i}.png", seed=5 + i) for i in range(3)]
    pool.append(_img(tmp_path / "more" / "deep" / "u9.webp", seed=9))
    (tmp_path / "labels.csv").write_text(
        "path,label\nshots/2023/a.png,rose\n./shots/b.png,tulip\nc.jpg, rose \n"
    )
    (tmp_path / "test.csv").write_text("held/t.png,tulip\n")
    layout = read_layout(tmp_path)
    assert layout.layout == "csv" and layout.test_source == "test.csv"
    assert layout.classes == ["rose", "tulip"]
    assert dict(layout.labeled) == {a: 0, b: 1, c: 0}
    assert layout.test == [(t, 1)]
    assert sorted(layout.unlabeled) == sorted(pool)  # listed images and the CSVs are not in the pool
    assert "layout 2" in layout.describe()


def test_uniform_folders_are_held_in_memory_others_in_a_store_or_streamed(tmp_path: Path) -> None:
    for i in range(6):  # no test set: 2 of the 6 labeled images are held out
        _img(tmp_path / "u" / "labeled" / ("a" if i < 3 else "b") / f"{i}.png", (20, 16), i, mode="L")
        _img(tmp_path / "u" / "unlabeled" / f"{i}.png", (20, 16), 10 + i, mode="L")
    train = load_dataset("folder", "train", root=tmp_path / "u", image_size=16)
    assert train.images is not None
    assert train.images.shape == (10, 1, 16, 20)  # gray: one channel; the whole image, not a square
    small = load_dataset("folder", "train", root=tmp_path / "u", image_size=8)
    assert small.images is not None and small.images.shape == (10, 1, 8, 10)  # shorter side held at 8
    streamed = load_dataset("folder", "train", root=tmp_path / "u", image_size=16, cache_gb=0)
    assert streamed.images is None and streamed.dataset is not None
    assert streamed.dataset.store is None and streamed.dataset.supports_crops  # type: ignore[attr-defined]
    image, label = streamed.dataset[0]
    assert image.shape == (3, 16, 16) and label == 0
    assert torch.equal(image[0], train.images[0, 0, :, 2:18])  # the same pixels, centred square

    for i in range(4):  # mixed sizes: decoded once into a flat store, cropped by the loader's workers
        _img(tmp_path / "m" / "labeled" / ("a" if i < 2 else "b") / f"{i}.png", (20 + 4 * i, 16), i)
        _img(tmp_path / "m" / "unlabeled" / f"{i}.png", (16, 24), 10 + i)
        _img(tmp_path / "m" / "test" / ("a" if i < 2 else "b") / f"{i}.png", (16, 16), 20 + i)
    mixed = load_dataset("folder", "train", root=tmp_path / "m", image_size=16)
    assert mixed.images is None and mixed.dataset is not None
    store = mixed.dataset.store  # type: ignore[attr-defined]
    assert store is not None and len(store) == 8 and store[1].shape == (16, 24, 3)
    assert mixed.dataset[1][0].shape == (3, 16, 16)
    crop, label = mixed.dataset[(1, 0, 0.0, 0.0, 1.0, 1.0, False, 8)]
    assert crop.shape == (3, 8, 8) and label == 0


def test_warnings_for_few_labels_and_a_small_pool(tmp_path: Path) -> None:
    _img(tmp_path / "labeled" / "a" / "1.png", seed=1)
    _img(tmp_path / "labeled" / "a" / "2.png", seed=2)
    _img(tmp_path / "labeled" / "b" / "3.png", seed=3)
    _img(tmp_path / "unlabeled" / "4.png", seed=4)
    with pytest.warns(BadImagesWarning) as warned:
        splits = folder_splits(tmp_path)
    messages = " ".join(str(w.message) for w in warned)
    assert "1 classes have fewer than 2 labeled images: b" in messages and "Fix: label at least 2" in messages
    assert "pool (1 images) is smaller than the labeled set (3)" in messages and "Fix: add" in messages
    assert splits.per_class(splits.validation) == {"a": 1, "b": 0}  # b's only image stays in training
