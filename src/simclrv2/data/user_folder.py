"""A user's own folder: a few labeled images, a large unlabeled pool, maybe a labeled test set (issue 14).

Two layouts are accepted (:func:`read_layout` says which it found):

1. ``ROOT/labeled/<class>/*`` (any nesting inside a class folder), ``ROOT/unlabeled/**/*`` (any nesting, no
   classes), optionally ``ROOT/test/<class>/*`` (or ``ROOT/val/<class>/*``).
2. Any folder of images plus ``ROOT/labels.csv`` (``path,label`` rows, paths relative to ROOT, an optional
   ``path,label`` header): the listed images are labeled, every other image under ROOT is unlabeled;
   optionally ``ROOT/test.csv`` (same format) lists a labeled test set.

To the stages this is one more dataset, ``folder`` (STYLE.md: its layout is data's business), with splits

* ``train``: the labeled images used for training, then the unlabeled pool (label -1). Pretraining and
  distillation use all of it; fine-tuning and the supervised baseline select the labeled ones
  (labels ``all``).
* ``test``: the test set, or, without one, a class-balanced **validation** part of the labeled images
  (``validation_fraction``, drawn once from the sorted file list) that no stage trains on; a model
  evaluated on it reports "validation" (:attr:`ImageData.eval_name`).
* ``labeled`` and ``unlabeled``: the two parts of ``train`` (``pool_predictions.csv`` labels the pool).

Every file's header is read before any work (:func:`~simclrv2.data.datasets.scan_image_headers`): bad files
stop the run listing them, or are left out with a counted warning under ``bad_images="skip"``. A split that
decodes to at most ``cache_gb`` GiB is decoded once (progress bar) and held in memory as uint8: one
``(N, C, H, W)`` tensor when all its images have one size (then it is augmented on the device like
CIFAR), else an :class:`~simclrv2.data.photos.ImageStore` that the loader's workers crop from; larger splits
stream from the files. Parsed layouts and decoded splits are kept for the process, so the stages of one
pipeline read and decode the folder once.
"""

from __future__ import annotations

import csv
import hashlib
import os
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclrv2.data.datasets import (
    IMAGE_EXTENSIONS,
    BadImagesError,
    BadImagesWarning,
    ImageData,
    ImageFolderDataset,
    ImageHeader,
    header_sizes,
    report_bad_files,
    scan_image_headers,
)
from simclrv2.data.photos import ImageStore, decode_into, held_size

__all__ = [
    "DEFAULT_CACHE_GB",
    "DEFAULT_VALIDATION_FRACTION",
    "FolderLayout",
    "FolderSplits",
    "folder_splits",
    "load_user_folder",
    "read_layout",
]

DEFAULT_CACHE_GB = 4.0
DEFAULT_VALIDATION_FRACTION = 0.2
LABELS_CSV, TEST_CSV = "labels.csv", "test.csv"
VALIDATION_SEED = 0  # the held-out part is a function of the folder, the same for every stage and seed
GRAY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N", "La"}
_MAX_LISTED = 5


@dataclass
class FolderLayout:
    """Which files of ROOT are labeled, unlabeled and test (absolute paths, sorted), before the scan."""

    root: Path
    layout: str
    """``folders`` (labeled/, unlabeled/, test|val/) or ``csv`` (labels.csv, test.csv)."""
    classes: list[str]
    labeled: list[tuple[str, int]]
    unlabeled: list[str]
    test: list[tuple[str, int]]
    test_source: str | None
    """``test/``, ``val/``, ``test.csv`` or None."""
    notes: list[str] = field(default_factory=list)
    """What was ignored and why (said once, when the folder is read)."""

    def describe(self) -> str:
        """One line: which layout was found, from which files."""
        if self.layout == "folders":
            parts = ["labeled/<class>/", "unlabeled/"] + ([self.test_source] if self.test_source else [])
            return f"layout 1 ({', '.join(parts)})"
        parts = [LABELS_CSV] + ([TEST_CSV] if self.test_source else [])
        return f"layout 2 ({' + '.join(parts)}; every other image under the folder is unlabeled)"


@dataclass
class FolderSplits:
    """The folder after the header scan: what each stage sees (see the module docstring)."""

    layout: FolderLayout
    labeled_train: list[tuple[str, int]]
    validation: list[tuple[str, int]]
    unlabeled: list[str]
    test: list[tuple[str, int]]
    headers: dict[str, ImageHeader]
    skipped: list[tuple[str, str]]
    channels: int

    @property
    def classes(self) -> list[str]:
        return self.layout.classes

    @property
    def eval_name(self) -> str:
        return "test" if self.layout.test_source else "validation"

    @property
    def evaluation(self) -> list[tuple[str, int]]:
        return self.test if self.layout.test_source else self.validation

    def per_class(self, samples: list[tuple[str, int]]) -> dict[str, int]:
        counts = Counter(label for _, label in samples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def median_short_side(self) -> int:
        """Median shorter side of the training images (labeled + pool): what the recipe sizes crops from."""
        files = [f for f, _ in self.labeled_train] + self.unlabeled
        return int(statistics.median(min(self.headers[f].height, self.headers[f].width) for f in files))

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.layout.root)


# --------------------------------------------------------------------------------------------- listing


def _check_name(path: str, bad_names: list[str]) -> bool:
    """False (and recorded) for a file name that is not valid UTF-8: Python holds it with surrogate escapes,
    which cannot be written to a CSV, a JSON report or a log."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        bad_names.append(repr(os.fsencode(path))[2:-1])
        return False
    return True


def _walk(directory: Path, bad_names: list[str]) -> tuple[list[str], list[str]]:
    """(image files, other files) under ``directory``, recursively, sorted; hidden entries are skipped and
    symlinked directories are not followed (a link back up would loop)."""
    images: list[str] = []
    others: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path) or not _check_name(path, bad_names):
                continue
            (images if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else others).append(path)
    return sorted(images), sorted(others)


def _subdirs(directory: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def _class_folders(
    directory: Path, bad_names: list[str], notes: list[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """(class names, [(file, class name)]) of ``directory/<class>/**``."""
    names = _subdirs(directory)
    if not names:
        raise FileNotFoundError(
            f"no class folders in {directory}: expected {directory}/<class>/<image files>, one folder "
            "per class"
        )
    loose, _ = _walk_top(directory, bad_names)
    if loose:
        notes.append(
            f"ignored {len(loose)} images directly in {directory} (not in a class folder), e.g. "
            f"{', '.join(loose[:3])}: move them into {directory}/<class>/ or into unlabeled/"
        )
    samples: list[tuple[str, str]] = []
    empty, others = [], []
    for name in names:
        files, other = _walk(directory / name, bad_names)
        others += other
        if not files:
            empty.append(name)
        samples += [(f, name) for f in files]
    if empty:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders of {directory}: {', '.join(empty)}. "
            "Remove the empty folders or add images."
        )
    if others:
        notes.append(_ignored_others(others, directory))
    return names, samples


def _walk_top(directory: Path, bad_names: list[str]) -> tuple[list[str], list[str]]:
    """(image files, other files) directly in ``directory``."""
    images: list[str] = []
    others: list[str] = []
    for e in sorted(os.scandir(directory), key=lambda e: e.name):
        if e.name.startswith(".") or not e.is_file() or not _check_name(e.path, bad_names):
            continue
        (images if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS else others).append(e.path)
    return images, others


def _ignored_others(others: list[str], where: Path) -> str:
    return (
        f"ignored {len(others)} files in {where} that are not images ({', '.join(IMAGE_EXTENSIONS)}), "
        f"e.g. {', '.join(others[:3])}"
    )


def _read_folders_layout(root: Path, bad_names: list[str]) -> FolderLayout:
    notes: list[str] = []
    names, labeled_named = _class_folders(root / "labeled", bad_names, notes)
    unlabeled: list[str] = []
    if (root / "unlabeled").is_dir():
        unlabeled, others = _walk(root / "unlabeled", bad_names)
        if others:
            notes.append(_ignored_others(others, root / "unlabeled"))
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    test: list[tuple[str, int]] = []
    if test_dir is not None:
        if test_dir.name == "test" and (root / "val").is_dir():
            notes.append(f"using {root / 'test'} as the test set; {root / 'val'} is ignored")
        test_names, test_named = _class_folders(test_dir, bad_names, notes)
        unknown = [c for c in test_names if c not in names]
        if unknown:
            raise ValueError(
                f"{test_dir} has classes that {root / 'labeled'} does not: {', '.join(unknown)}. A model "
                "can only be tested on classes it was taught: add labeled images of them, or remove those "
                "folders."
            )
        test = [(f, names.index(c)) for f, c in test_named]
    used = {"labeled", "unlabeled", "test", "val", LABELS_CSV, TEST_CSV}
    stray = [e.name for e in os.scandir(root) if not e.name.startswith(".") and e.name not in used]
    if stray:
        notes.append(
            f"ignored {len(stray)} entries of {root} outside labeled/, unlabeled/ and test/ (or val/): "
            f"{', '.join(sorted(stray)[:5])}"
        )
    labeled = [(f, names.index(c)) for f, c in labeled_named]
    source = None if test_dir is None else f"{test_dir.name}/"
    return FolderLayout(root, "folders", names, labeled, unlabeled, test, source, notes)


# ------------------------------------------------------------------------------------------ labels.csv


def _read_label_rows(root: Path, csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, path, label) of every row of a ``path,label`` file; bad rows: an error listing them."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{csv_path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8 (CSV UTF-8)"
        ) from None
    rows: list[tuple[int, str, str]] = []
    problems: list[str] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        cells = [c.strip() for c in row]
        if not rows and not problems and [c.lower() for c in cells] == ["path", "label"]:
            continue  # the header
        if len(cells) != 2 or not cells[0] or not cells[1]:
            problems.append(f"line {lineno}: {','.join(row)!r} (expected path,label)")
            continue
        rows.append((lineno, cells[0], cells[1]))
    if problems:
        raise ValueError(f"{csv_path}: {len(problems)} bad rows: {_listed(problems)}")
    if not rows:
        raise ValueError(
            f"{csv_path} lists no images: expected rows of path,label (paths relative to {root})"
        )
    return rows


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return "; ".join(items[:_MAX_LISTED]) + more


def _resolve_rows(
    root: Path, csv_path: Path, rows: list[tuple[int, str, str]], policy: str, notes: list[str]
) -> dict[str, str]:
    """{absolute path: label} of the rows; files outside ROOT, non-images and conflicting duplicates are an
    error; missing files are an error, or left out with a counted warning under ``skip``; exact duplicates
    are said once."""
    real_root = root.resolve()
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    outside, not_image, missing, conflicts, duplicates = [], [], [], [], 0
    for lineno, raw, label in rows:
        rel = raw.replace("\\", "/")
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm == ".." or norm.startswith("../"):
            outside.append(f"line {lineno}: {raw}")
            continue
        path = str(root / norm)
        if os.path.splitext(norm)[1].lower() not in IMAGE_EXTENSIONS:
            not_image.append(f"line {lineno}: {raw}")
            continue
        if not os.path.isfile(path):
            missing.append((path, f"line {lineno} of {csv_path.name}: no such file"))
            continue
        if not Path(path).resolve().is_relative_to(real_root):
            outside.append(f"line {lineno}: {raw} (a link to {Path(path).resolve()})")
            continue
        if path in out:
            if out[path] != label:
                conflicts.append(f"{raw}: {out[path]!r} (line {line_of[path]}) and {label!r} (line {lineno})")
            else:
                duplicates += 1
            continue
        out[path], line_of[path] = label, lineno
    if outside:
        raise ValueError(
            f"{csv_path}: {len(outside)} rows name files outside {root}: {_listed(outside)}. Paths are "
            f"relative to {root} and must stay inside it: copy the images into the folder."
        )
    if not_image:
        raise ValueError(
            f"{csv_path}: {len(not_image)} rows name files that are not images "
            f"({', '.join(IMAGE_EXTENSIONS)}): {_listed(not_image)}"
        )
    if conflicts:
        raise ValueError(
            f"{csv_path}: {len(conflicts)} images are listed twice with different labels: "
            f"{_listed(conflicts)}. "
            "Keep one row per image."
        )
    if missing:
        report_bad_files(
            missing, len(rows), policy, f"rows of {csv_path.name} name missing files",
            f"rows of {csv_path.name} naming missing files", fix="correct the paths (relative to the folder)",
        )  # fmt: skip
    if duplicates:
        notes.append(f"{csv_path}: {duplicates} duplicate rows (same path and label) counted once")
    return out


def _read_csv_layout(root: Path, policy: str, bad_names: list[str]) -> FolderLayout:
    notes: list[str] = []
    labeled_map = _resolve_rows(
        root, root / LABELS_CSV, _read_label_rows(root, root / LABELS_CSV), policy, notes
    )
    classes = sorted(set(labeled_map.values()))
    test_map: dict[str, str] = {}
    if (root / TEST_CSV).is_file():
        test_map = _resolve_rows(
            root, root / TEST_CSV, _read_label_rows(root, root / TEST_CSV), policy, notes
        )
        both = sorted(set(test_map) & set(labeled_map))
        if both:
            raise ValueError(
                f"{len(both)} images are in both {LABELS_CSV} and {TEST_CSV}: {_listed(both)}. A test image "
                "must not be trained on: list it in one of them."
            )
        unknown = sorted(set(test_map.values()) - set(classes))
        if unknown:
            raise ValueError(
                f"{TEST_CSV} has labels that {LABELS_CSV} does not: {', '.join(unknown)}. A model can only "
                "be tested on classes it was taught: add labeled images of them, or drop those rows."
            )
    images, others = _walk(root, bad_names)
    others = [o for o in others if os.path.relpath(o, root) not in (LABELS_CSV, TEST_CSV)]
    if others:
        notes.append(_ignored_others(others, root))
    listed = set(labeled_map) | set(test_map)
    unlabeled = [f for f in images if f not in listed]
    labeled = sorted((f, classes.index(c)) for f, c in labeled_map.items())
    test = sorted((f, classes.index(c)) for f, c in test_map.items())
    return FolderLayout(root, "csv", classes, labeled, unlabeled, test, TEST_CSV if test_map else None, notes)


# ------------------------------------------------------------------------------------------ the layout


def read_layout(root: str | Path, policy: str = "fail") -> FolderLayout:
    """Detect the layout of ``root`` and list its labeled, unlabeled and test images (no file is opened)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data folder {path} does not exist (or is not a directory)")
    has_csv, has_dirs = (path / LABELS_CSV).is_file(), (path / "labeled").is_dir()
    if has_csv and has_dirs:
        raise ValueError(
            f"{path} has both {LABELS_CSV} and labeled/: it is not clear which says the labels. Keep one: "
            f"the class folders labeled/<class>/, or {LABELS_CSV} (path,label)."
        )
    if not (has_csv or has_dirs):
        hint = ""
        if (path / "train").is_dir():
            hint = (
                " It has train/: a fully labeled image folder is --set data.name=imagefolder with "
                "--config; for the semi-supervised recipe rename train/ to labeled/ and put the unlabeled "
                "images in unlabeled/."
            )
        raise FileNotFoundError(
            f"{path}: no labeled images found. Expected either {path}/labeled/<class>/<images> (+ "
            f"{path}/unlabeled/<images>, optionally {path}/test/<class>/<images>), or {path}/{LABELS_CSV} "
            f"with rows path,label (every other image under {path} is unlabeled).{hint}"
        )
    bad_names: list[str] = []
    layout = _read_csv_layout(path, policy, bad_names) if has_csv else _read_folders_layout(path, bad_names)
    if bad_names:
        pairs = [(n, "file name is not valid UTF-8") for n in sorted(set(bad_names))]
        report_bad_files(
            pairs, len(pairs) + len(layout.labeled) + len(layout.unlabeled) + len(layout.test), policy,
            "files have names that are not UTF-8", "files with names that are not UTF-8",
            fix="rename them (e.g. convmv -f latin1 -t utf8 -r --notest FOLDER)",
        )  # fmt: skip
    if len(layout.classes) < 2:
        raise ValueError(
            f"{path}: the labeled images have {len(layout.classes)} class ({', '.join(layout.classes)}); a "
            "classifier needs at least 2 classes"
        )
    return layout


# ---------------------------------------------------------------------------------------- scan + splits


_SPLITS_CACHE: dict[tuple, FolderSplits] = {}
_DECODED_CACHE: dict[tuple, Any] = {}


def _listing_key(layout: FolderLayout) -> str:
    digest = hashlib.sha1()
    for f, c in layout.labeled + layout.test:
        digest.update(f"{f}\0{c}\n".encode())
    for f in layout.unlabeled:
        digest.update(f"{f}\n".encode())
    return digest.hexdigest()


def folder_splits(
    root: str | Path, policy: str = "fail", validation_fraction: float | None = None
) -> FolderSplits:
    """Read the layout, scan every file's header (bad files: error or counted warning), hold out the
    validation part when there is no test set, and check what is left; warnings say what to fix.

    Kept for the process (keyed by the file list), so a pipeline's stages do it once."""
    fraction = DEFAULT_VALIDATION_FRACTION if validation_fraction is None else float(validation_fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"data.validation_fraction must be in (0, 1), got {fraction}")
    layout = read_layout(root, policy)
    key = (str(layout.root.resolve()), policy, fraction, _listing_key(layout))
    if key in _SPLITS_CACHE:
        return _SPLITS_CACHE[key]
    for note in layout.notes:
        warnings.warn(note, BadImagesWarning, stacklevel=2)
    files = [f for f, _ in layout.labeled] + layout.unlabeled + [f for f, _ in layout.test]
    kept, headers = scan_image_headers(files, policy, load_size=1)  # small images: said per load size
    header = dict(zip(kept, headers, strict=True))
    skipped = [(f, "unreadable") for f in files if f not in header]
    labeled = [(f, c) for f, c in layout.labeled if f in header]
    unlabeled = [f for f in layout.unlabeled if f in header]
    test = [(f, c) for f, c in layout.test if f in header]
    _check_labeled(layout, labeled)
    labeled_train, validation = labeled, list[tuple[str, int]]()
    if not layout.test_source:
        labeled_train, validation = _hold_out(labeled, fraction)
    channels = 1 if all(h.mode in GRAY_MODES for h in headers) else 3
    splits = FolderSplits(layout, labeled_train, validation, unlabeled, test, header, skipped, channels)
    _check_pool(splits)
    _SPLITS_CACHE[key] = splits
    return splits


def _check_labeled(layout: FolderLayout, labeled: list[tuple[str, int]]) -> None:
    counts = Counter(c for _, c in labeled)
    lost = [name for i, name in enumerate(layout.classes) if counts.get(i, 0) == 0]
    if lost:
        raise BadImagesError(
            f"no readable labeled images left for classes {', '.join(lost)} "
            "(data.bad_images=skip left out every one): repair the images or remove the classes"
        )
    few = [name for i, name in enumerate(layout.classes) if counts.get(i, 0) < 2]
    if few:
        warnings.warn(
            f"{len(few)} classes have fewer than 2 labeled images: {', '.join(few[:10])}. One image per "
            "class cannot be both trained on and held out, so these classes are never validated (and the "
            "hyper-parameter search cannot score them). Fix: label at least 2 images (better 10 or more) of "
            "each class.",
            BadImagesWarning,
            stacklevel=3,
        )


def _hold_out(labeled: list[tuple[str, int]], fraction: float) -> tuple[list, list]:
    """Class-balanced (train, validation) parts of the labeled images: per class round(fraction * n), at
    least 1 and at most n - 1 (SPEC-free; the same rule as the stages' hyper-parameter validation split)."""
    from simclrv2.data.subsets import split_validation

    labels = torch.tensor([c for _, c in labeled], dtype=torch.int64)
    train_idx, val_idx = split_validation(torch.arange(len(labeled)), labels, fraction, VALIDATION_SEED)
    return [labeled[i] for i in train_idx.tolist()], [labeled[i] for i in val_idx.tolist()]


def _check_pool(splits: FolderSplits) -> None:
    root = splits.layout.root
    where = f"{root}/unlabeled/" if splits.layout.layout == "folders" else f"{root} (outside {LABELS_CSV})"
    if not splits.unlabeled:
        raise ValueError(
            f"the unlabeled pool is empty: no unlabeled images in {where}. SimCLRv2 pretrains and distills "
            f"on unlabeled images: put them in {where}. (To train on labeled images alone, use the "
            "supervised command on an imagefolder.)"
        )
    n_labeled = len(splits.labeled_train) + len(splits.validation)
    if len(splits.unlabeled) < n_labeled:
        warnings.warn(
            f"the unlabeled pool ({len(splits.unlabeled)} images) is smaller than the labeled set "
            f"({n_labeled}): the method gains from a pool many times larger than the labels. Fix: add "
            f"unlabeled images of the same domain to {where}.",
            BadImagesWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------- loading


def load_user_folder(
    split: str,
    root: str | Path | None,
    load_size: int | None = None,
    bad_images: str = "fail",
    cache_gb: float | None = None,
    validation_fraction: float | None = None,
) -> ImageData:
    """One split of a user's folder (see the module docstring) as an :class:`ImageData`."""
    if root is None:
        raise ValueError("the folder dataset needs a root: the folder holding labeled/ (or labels.csv)")
    splits = folder_splits(root, bad_images, validation_fraction)
    size = int(load_size) if load_size is not None else min(256, splits.median_short_side())
    if size <= 0:
        raise ValueError(f"load_size must be positive, got {load_size}")
    budget = DEFAULT_CACHE_GB if cache_gb is None else float(cache_gb)
    if split in ("labeled", "unlabeled"):
        train = load_user_folder("train", root, size, bad_images, budget, validation_fraction)
        n = len(splits.labeled_train)  # the labeled images come first
        part = slice(0, n) if split == "labeled" else slice(n, len(train))
        if train.images is not None:  # a view, not a copy of what may be gigabytes
            return ImageData(
                train.images[part], train.labels[part].clone(), train.classes, name=f"folder/{split}"
            )
        from simclrv2.data.subsets import subset_data

        out = subset_data(train, torch.arange(len(train))[part])
        out.name = f"folder/{split}"
        return out
    if split == "train":
        samples = splits.labeled_train + [(f, -1) for f in splits.unlabeled]
        name, eval_name = "folder/train", "test"
    elif split == "test":
        samples, eval_name = splits.evaluation, splits.eval_name
        name = f"folder/{eval_name}"
    else:
        raise ValueError(f"unknown split {split!r} for folder; expected train, test, labeled or unlabeled")
    key = (
        str(splits.layout.root.resolve()), split, size, bad_images, budget, _listing_key(splits.layout),
        len(samples), samples[0][0] if samples else "",
    )  # fmt: skip
    if key not in _DECODED_CACHE:
        if len(_DECODED_CACHE) >= 4:  # a few splits of one folder; another folder replaces them
            _DECODED_CACHE.clear()
        _DECODED_CACHE[key] = _build(splits, samples, size, bad_images, budget, name)
    images, dataset, labels = _DECODED_CACHE[key]
    return ImageData(
        images=images, labels=labels.clone(), classes=list(splits.classes), dataset=dataset, name=name,
        eval_name=eval_name,
    )  # fmt: skip


def _build(
    splits: FolderSplits, samples: list[tuple[str, int]], size: int, policy: str, budget_gb: float, name: str
) -> tuple[torch.Tensor | None, ImageFolderDataset | None, torch.Tensor]:
    """(in-memory images or None, streaming dataset or None, labels) for ``samples``."""
    headers = [splits.headers[f] for f, _ in samples]
    small = [f for f, h in zip(samples, headers, strict=True) if min(h.height, h.width) < size]
    if small:
        warnings.warn(
            f"{len(small)} of {len(samples)} images of {name} are smaller than the load size {size} px and "
            f"are upscaled, e.g. {', '.join(f for f, _ in small[:3])} (lower data.load_size to avoid it)",
            BadImagesWarning,
            stacklevel=3,
        )
    held = np.array([held_size(h.height, h.width, size) for h in headers], dtype=np.int64).reshape(-1, 2)
    channels = splits.channels
    nbytes = int((held[:, 0] * held[:, 1]).sum()) * channels
    labels = torch.tensor([c for _, c in samples], dtype=torch.int64)
    if nbytes > budget_gb * 2**30 or not samples:
        return None, ImageFolderDataset(samples, size, policy, sizes=header_sizes(headers)), labels
    paths = [f for f, _ in samples]
    failed: list[tuple[str, str]] = []
    uniform = len({(int(h), int(w)) for h, w in held}) == 1
    store: ImageStore | None = None
    if uniform:
        h, w = (int(v) for v in held[0])
        images = torch.empty(len(samples), channels, h, w, dtype=torch.uint8)

        def put(i: int, arr: np.ndarray) -> None:
            images[i] = torch.from_numpy(arr).permute(2, 0, 1)

    else:
        store = ImageStore(np.concatenate([held, np.full((len(held), 1), channels)], axis=1))
        put = store.put  # type: ignore[assignment]
    decode_into(
        paths, put, channels, lambda i, why: failed.append((paths[i], why)), sizes=held,
        desc=f"decoding {name} into memory",
    )  # fmt: skip
    keep = np.ones(len(samples), dtype=bool)
    if failed:
        report_bad_files(failed, len(samples), policy, "image files cannot be decoded", "undecodable files")
        _forget(splits, {f for f, _ in failed})
        keep = np.array([f not in {b for b, _ in failed} for f in paths])
    keep_t = torch.from_numpy(keep)
    if store is None:
        return images[keep_t], None, labels[keep_t]
    if failed:  # the store without the failed images
        old, store = store, ImageStore(store.shapes[keep])
        for j, i in enumerate(np.flatnonzero(keep)):
            store.put(j, old[int(i)])
    kept = [s for s, k in zip(samples, keep, strict=True) if k]
    return None, ImageFolderDataset(kept, size, policy, sizes=held[keep], store=store), labels[keep_t]


def _forget(splits: FolderSplits, bad: set[str]) -> None:
    """Drop files that failed to decode (``skip``) from every part, so all splits agree on what is left."""
    splits.labeled_train = [(f, c) for f, c in splits.labeled_train if f not in bad]
    splits.validation = [(f, c) for f, c in splits.validation if f not in bad]
    splits.test = [(f, c) for f, c in splits.test if f not in bad]
    splits.unlabeled = [f for f in splits.unlabeled if f not in bad]
    splits.skipped += [(f, "cannot be decoded") for f in sorted(bad)]
    _check_labeled(splits.layout, splits.labeled_train + splits.validation)
    _check_pool(splits)
