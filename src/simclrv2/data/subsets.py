"""Label subsets for semi-supervised stages: "1%", "10%", "100%" or "N/class" of the training labels, or
"all": every labeled image of a split whose other images are unlabeled (label -1, a user's folder).

Subsets are class-balanced and a pure function of (labels, spec, seed). The chosen indices are written to the
run directory as plain text (one index per line) and reused when the file exists, so every stage of a
pipeline (fine-tune, supervised baseline, linear eval) sees exactly the same labeled images. The official
ImageNet 1%/10% lists (one file name per line) are read with :func:`read_subset_file`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Subset

from simclrv2.data.datasets import ImageData

__all__ = [
    "LabelSpec",
    "dataset_file_names",
    "default_epochs",
    "fraction_of",
    "label_fraction_indices",
    "labeled_subset",
    "load_indices",
    "parse_label_spec",
    "read_subset_file",
    "resolve_label_indices",
    "save_indices",
    "split_validation",
    "subset_data",
]

_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_PER_CLASS = re.compile(r"^\s*(\d+)\s*/\s*class\s*$")
_ALL = re.compile(r"^\s*all\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class LabelSpec:
    """Either a fraction of every class (``fraction`` in (0, 1]) or a fixed ``count_per_class``."""

    fraction: float | None = None
    count_per_class: int | None = None
    every_labeled: bool = False
    """``all``: every labeled image (fraction 1 of each class), whatever share of the split they are."""

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.count_per_class is None):
            raise ValueError("LabelSpec needs exactly one of fraction or count_per_class")

    @property
    def is_full(self) -> bool:
        return self.fraction == 1.0

    def __str__(self) -> str:
        if self.every_labeled:
            return "all"
        if self.fraction is not None:
            return f"{self.fraction * 100:g}%"
        return f"{self.count_per_class}/class"


def parse_label_spec(spec: str) -> LabelSpec:
    """``"1%"``, ``"10%"``, ``"100%"``, ``"0.5%"``, ``"10/class"`` or ``"all"`` -> :class:`LabelSpec`."""
    text = str(spec)
    if _ALL.match(text):
        return LabelSpec(fraction=1.0, every_labeled=True)
    match = _PERCENT.match(text)
    if match:
        percent = float(match.group(1))
        if not 0.0 < percent <= 100.0:
            raise ValueError(f"label fraction {text!r} must be in (0%, 100%], e.g. 1%, 10% or 100%")
        return LabelSpec(fraction=percent / 100.0)
    match = _PER_CLASS.match(text)
    if match:
        count = int(match.group(1))
        if count < 1:
            raise ValueError(f"labels per class {text!r} must be >= 1, e.g. 10/class")
        return LabelSpec(count_per_class=count)
    raise ValueError(
        f"cannot read label spec {text!r}: expected a percentage like 1%, 10%, 100%, N/class or all"
    )


def _class_members(labels: Tensor) -> dict[int, Tensor]:
    labels = labels.cpu()
    classes = sorted(int(c) for c in labels.unique() if c >= 0)  # -1 = unlabeled, never selected
    return {c: torch.nonzero(labels == c).flatten() for c in classes}


def label_fraction_indices(labels: Tensor, spec: LabelSpec | str, seed: int = 0) -> Tensor:
    """Sorted int64 indices of a class-balanced labeled subset, deterministic in ``seed``.

    Per class: ``round(fraction · class size)`` images (at least 1), or exactly ``count_per_class``
    (an error if a class has fewer). Images with label -1 (unlabeled) are never chosen.
    """
    if isinstance(spec, str):
        spec = parse_label_spec(spec)
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for cls, members in _class_members(labels).items():
        if spec.fraction is not None:
            count = max(1, round(spec.fraction * len(members)))
        else:
            assert spec.count_per_class is not None
            count = spec.count_per_class
            if count > len(members):
                raise ValueError(
                    f"class {cls} has only {len(members)} labeled images, fewer than {spec}; "
                    f"use at most {len(members)}/class or a percentage"
                )
        perm = torch.randperm(len(members), generator=gen)
        chosen.append(members[perm[:count]])
    if not chosen:
        raise ValueError("no labeled images (every label is -1): a labeled split is needed")
    return torch.cat(chosen).sort().values


def split_validation(
    indices: Tensor, labels: Tensor, fraction: float = 0.1, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Split a labeled subset into (train, validation) index tensors, class-balanced and disjoint.

    Per class, ``round(fraction · n)`` images go to validation, at least 1 and at most n - 1 (a class with
    a single labeled image stays in train). Used to choose hyper-parameters without the test split.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    indices = indices.cpu().long()
    sub_labels = labels.cpu()[indices]
    gen = torch.Generator().manual_seed(seed + 7919)
    train_parts, val_parts = [], []
    for _cls, members in _class_members(sub_labels).items():
        n = len(members)
        n_val = min(max(1, round(fraction * n)), n - 1)
        perm = members[torch.randperm(n, generator=gen)]
        val_parts.append(indices[perm[:n_val]])
        train_parts.append(indices[perm[n_val:]])
    return torch.cat(train_parts).sort().values, torch.cat(val_parts).sort().values


def save_indices(path: str | Path, indices: Tensor) -> None:
    """Plain text, one index per line (readable, diffable, shareable between stages). Written atomically
    by the main process only (every rank derives the same indices; one writes them), through a temp file of
    this process's own, so that stages run side by side that draw the same subset cannot collide."""
    from simclrv2.checkpoint import atomic_write_text
    from simclrv2.distributed import is_main_process

    if not is_main_process():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(f"{int(i)}\n" for i in indices.tolist()))


def load_indices(path: str | Path, dataset_size: int | None = None) -> Tensor:
    """Read an index file written by :func:`save_indices`; checks the indices fit ``dataset_size``."""
    path = Path(path)
    values = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            values.append(int(line))
        except ValueError:
            raise ValueError(f"{path}:{lineno}: {line!r} is not an image index") from None
    if not values:
        raise ValueError(f"index file {path} is empty")
    if not all(0 <= v < 2**62 for v in values):  # checked before a tensor overflows on it
        raise ValueError(
            f"index file {path} holds an index out of range ({min(values)} .. {max(values)}): it belongs to "
            "another dataset or is damaged; delete it or use another run_dir"
        )
    idx = torch.tensor(values, dtype=torch.int64)
    if len(idx.unique()) != len(idx):
        raise ValueError(f"index file {path} lists some images twice")
    if idx.min() < 0 or (dataset_size is not None and idx.max() >= dataset_size):
        raise ValueError(
            f"index file {path} holds indices in [{int(idx.min())}, {int(idx.max())}] but the dataset has "
            f"{dataset_size} images: it belongs to another dataset; delete it or use another run_dir"
        )
    return idx


def read_subset_file(path: str | Path, file_names: Sequence[str]) -> Tensor:
    """Indices of the images listed in an official subset file (e.g. ImageNet ``1percent.txt``).

    Each non-empty line is an image file name (``n01440764_10026.JPEG``), matched against ``file_names``
    (the dataset's file names, in dataset order, without directories). Entries with a path separator or
    ``..`` are rejected; unknown names are an error listing the first few.
    """
    path = Path(path)
    position = {name: i for i, name in enumerate(file_names)}
    found, unknown = [], []
    for lineno, raw in enumerate(_read_text(path).splitlines(), 1):
        name = raw.strip()
        if not name:
            continue
        if "/" in name or "\\" in name or ".." in name:
            raise ValueError(
                f"{path}:{lineno}: entry {name!r} must be a bare file name (no '/', '\\' or '..')"
            )
        if name in position:
            found.append(position[name])
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"{path}: {len(unknown)} names are not in the dataset, e.g. {', '.join(unknown[:5])}; "
            "is data.root the right dataset?"
        )
    if not found:
        raise ValueError(f"subset file {path} lists no images")
    return torch.tensor(sorted(set(found)), dtype=torch.int64)


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def dataset_file_names(data: ImageData) -> list[str]:
    """File names (no directories) of a streamed image-folder split, in dataset order."""
    paths = getattr(data.dataset, "paths", None)
    if paths is None:
        raise ValueError(f"{data.name or 'this dataset'} has no file names: subset files need an imagefolder")
    return [Path(str(p)).name for p in paths]


def resolve_label_indices(
    data: ImageData, labels: str, seed: int, index_file: str | Path
) -> tuple[Tensor, str]:
    """The labeled subset for a run, as (sorted indices, how they were obtained).

    If ``index_file`` exists it is loaded (every stage then sees the same labels) and checked against the
    dataset size; otherwise the subset is drawn (or read from a subset file when ``labels`` is a path to one)
    and saved there.
    """
    index_file = Path(index_file)
    if index_file.exists():
        return load_indices(index_file, len(data)), f"loaded from {index_file}"
    if _PERCENT.match(labels) or _PER_CLASS.match(labels) or _ALL.match(labels):
        idx = label_fraction_indices(data.labels, labels, seed)
        how = f"drew {labels} of the labels, class-balanced (seed {seed})"
    elif Path(labels).is_file():
        idx = read_subset_file(labels, dataset_file_names(data))
        how = f"read from subset file {labels}"
    else:
        parse_label_spec(labels)  # raises the explanatory error
        raise AssertionError("unreachable")
    save_indices(index_file, idx)
    return idx, how


def subset_data(data: ImageData, indices: Tensor) -> ImageData:
    """The images at ``indices`` as a new :class:`ImageData` (a copy in memory, a view when streaming)."""
    indices = indices.cpu().long()
    name = f"{data.name}[{len(indices)}]"
    if data.images is not None:
        return ImageData(data.images[indices], data.labels[indices].clone(), data.classes, name=name)
    subset = Subset(data.dataset, indices.tolist())  # type: ignore[arg-type]
    subset.image_shape = data.image_shape  # type: ignore[attr-defined]
    return ImageData(None, data.labels[indices].clone(), data.classes, dataset=subset, name=name)


def labeled_subset(data: ImageData, labels: str, seed: int, index_file: str | Path) -> tuple[ImageData, str]:
    """:func:`resolve_label_indices` then :func:`subset_data`."""
    idx, how = resolve_label_indices(data, labels, seed, index_file)
    return subset_data(data, idx), how


def default_epochs(labels: str, num_labeled: int, num_total: int) -> int:
    """The paper's fine-tuning budget (SPEC 4): 60 epochs below 10% labels, 30 from 10% up.

    A percentage spec is taken at its word (per-class rounding may make "10%" a hair under 10%);
    otherwise (``N/class``, ``all``, a subset file) the actual fraction of labeled images decides.
    """
    match = _PERCENT.match(labels)
    fraction = float(match.group(1)) / 100.0 if match else fraction_of(num_labeled, num_total)
    return 60 if fraction < 0.1 - 1e-9 else 30


def fraction_of(num_labeled: int, num_total: int) -> float:
    return num_labeled / max(num_total, 1) if num_total else math.nan
