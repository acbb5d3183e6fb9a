"""The label-efficiency experiment through the user's door (issue 14): Fashion-MNIST written as a folder of PNGs
(10 labeled images per class in labeled/<class>/, the rest of the training split as the unlabeled pool, the
test split as test/<class>/), run with ``simclrv2 pipeline --data`` at the label-efficiency benchmark's
settings (seed 0; rows: supervised, fine-tuned from head layer 1, self-distilled) and compared with that
benchmark's simulated-subset rows (``benchmarks/results/label_efficiency_fashion_mnist.json``).

    python benchmarks/user_folder.py                 # about 40 min on the 2-core development CPU
    python benchmarks/user_folder.py --readme        # also write the comparison into README.md

The labeled images are exactly label seed 0's 10/class subset of the simulated benchmark
(:func:`simclrv2.data.subsets.label_fraction_indices`), so both runs fine-tune on the same 100 images.
Writes ``benchmarks/results/user_folder_fashion_mnist.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIMULATED = RESULTS / "label_efficiency_fashion_mnist.json"
OUT = RESULTS / "user_folder_fashion_mnist.json"
README = ROOT / "README.md"
MARK_BEGIN, MARK_END = "<!-- user-folder -->", "<!-- /user-folder -->"


def class_dir_name(name: str) -> str:
    """A folder name for a class name (Fashion-MNIST's "T-shirt/top" has a slash)."""
    return name.replace("/", "-")


def write_fashion_mnist_folder(
    root: Path,
    labeled_per_class: int = 10,
    unlabeled: int | None = None,
    test: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fashion-MNIST as a user's folder of 28x28 grayscale PNGs (layout 1); returns what went where.

    ``labeled/<class>/``: ``labeled_per_class`` training images per class, label seed ``seed``'s subset of
    the simulated benchmark; ``unlabeled/``: ``unlabeled`` of the other training images (all when None),
    in shards of 1,000 (any nesting is allowed); ``test/<class>/``: the first ``test`` test images."""
    import torch
    from PIL import Image

    from simclrv2.data import load_dataset
    from simclrv2.data.subsets import label_fraction_indices

    train, test_split = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images is not None and test_split.images is not None
    labeled = label_fraction_indices(train.labels, f"{labeled_per_class}/class", seed)
    rest = np.setdiff1d(np.arange(len(train)), labeled.numpy())
    if unlabeled is not None:
        rest = np.random.default_rng(seed).permutation(rest)[:unlabeled]
        rest.sort()
    names = [class_dir_name(c) for c in train.classes]

    def save(path: Path, image: torch.Tensor) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path, compress_level=1)
        return str(path)

    out: dict[str, Any] = {"labeled": [], "unlabeled": [], "test": []}
    for i in labeled.tolist():
        c = int(train.labels[i])
        out["labeled"].append(save(root / "labeled" / names[c] / f"train{i:05d}.png", train.images[i]))
    for j, i in enumerate(rest.tolist()):
        out["unlabeled"].append(save(root / "unlabeled" / f"part{j // 1000:02d}" / f"train{i:05d}.png", train.images[i]))
    n_test = len(test_split) if test is None else min(test, len(test_split))
    for i in range(n_test):
        c = int(test_split.labels[i])
        out["test"].append(save(root / "test" / names[c] / f"test{i:05d}.png", test_split.images[i]))
    out["labeled_indices"] = labeled.tolist()
    return out
