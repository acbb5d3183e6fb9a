from pathlib import Path

import pytest
import torch

from simclrv2.data.datasets import ImageData
from simclrv2.data.subsets import (
    LabelSpec,
    label_fraction_indices,
    load_indices,
    parse_label_spec,
    read_subset_file,
    resolve_label_indices,
    save_indices,
    split_validation,
)


def _labels() -> torch.Tensor:
    # Unbalanced classes: 100, 50 and 7 images, shuffled.
    labels = torch.cat([torch.full((100,), 0), torch.full((50,), 1), torch.full((7,), 2)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]


def test_parse_label_spec() -> None:
    assert parse_label_spec("10%") == LabelSpec(fraction=0.1)
    assert parse_label_spec("100%").is_full
    assert parse_label_spec("0.5%").fraction == pytest.approx(0.005)
    assert parse_label_spec("10/class") == LabelSpec(count_per_class=10)
    for bad in ("0%", "150%", "ten", "10", "0/class", "%"):
        with pytest.raises(ValueError, match=r"label|expected"):
            parse_label_spec(bad)


def test_fraction_counts_per_class_and_determinism() -> None:
    labels = _labels()
    idx = label_fraction_indices(labels, "10%", seed=1)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [10, 5, 1]  # round(0.7) = 1, and never below 1
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == len(idx)
    assert torch.equal(idx, label_fraction_indices(labels, "10%", seed=1))
    assert not torch.equal(idx, label_fraction_indices(labels, "10%", seed=2))
    per_class = label_fraction_indices(labels, "5/class", seed=0)
    assert torch.bincount(labels[per_class]).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="only 7"):
        label_fraction_indices(labels, "8/class")
    assert len(label_fraction_indices(labels, "100%")) == len(labels)


def test_unlabeled_images_are_never_chosen() -> None:
    labels = torch.tensor([-1] * 10 + [0] * 10 + [1] * 10)
    idx = label_fraction_indices(labels, "50%")
    assert (labels[idx] >= 0).all() and len(idx) == 10


def test_validation_split_is_disjoint_and_balanced() -> None:
    labels = _labels()
    idx = label_fraction_indices(labels, "50%", seed=0)  # 50, 25, 4 per class
    train, val = split_validation(idx, labels, fraction=0.2, seed=0)
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == idx.tolist()
    assert torch.bincount(labels[val], minlength=3).tolist() == [10, 5, 1]


def test_index_file_round_trip_and_checks(tmp_path: Path) -> None:
    idx = torch.tensor([3, 7, 11])
    save_indices(tmp_path / "idx.txt", idx)
    assert (tmp_path / "idx.txt").read_text() == "3\n7\n11\n"
    assert torch.equal(load_indices(tmp_path / "idx.txt", 12), idx)
    with pytest.raises(ValueError, match="another dataset"):
        load_indices(tmp_path / "idx.txt", 10)


def test_resolve_reuses_the_saved_file(tmp_path: Path) -> None:
    data = ImageData(torch.zeros(157, 1, 4, 4, dtype=torch.uint8), _labels(), ["a", "b", "c"])
    first, how = resolve_label_indices(data, "10%", 0, tmp_path / "labels.txt")
    assert "drew" in how
    again, how = resolve_label_indices(data, "10%", seed=99, index_file=tmp_path / "labels.txt")
    assert "loaded" in how and torch.equal(first, again)


def test_read_subset_file(tmp_path: Path) -> None:
    names = ["n01_1.JPEG", "n01_2.JPEG", "n02_1.JPEG"]
    good = tmp_path / "1percent.txt"
    good.write_text("n02_1.JPEG\n\nn01_1.JPEG\n")
    assert read_subset_file(good, names).tolist() == [0, 2]
    bad = tmp_path / "bad.txt"
    bad.write_text("n01_1.JPEG\nnope.JPEG\n")
    with pytest.raises(ValueError, match=r"nope\.JPEG"):
        read_subset_file(bad, names)
    evil = tmp_path / "evil.txt"
    evil.write_text("../n01_1.JPEG\n")
    with pytest.raises(ValueError, match="bare file name"):
        read_subset_file(evil, names)


def test_default_epochs_follow_the_paper() -> None:
    from simclrv2.data.subsets import default_epochs

    assert default_epochs("1%", 600, 60000) == 60
    assert default_epochs("10%", 5999, 60000) == 30  # per-class rounding does not flip the rule
    assert default_epochs("100%", 60000, 60000) == 30
    assert default_epochs("10/class", 100, 60000) == 60
