"""BatchLoader: epoch order, sharding over ranks, resume, and in-memory == streaming."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from simclrv2.data.datasets import ImageData
from simclrv2.data.loader import BatchLoader, epoch_order


def indexed_data(n: int) -> ImageData:
    """Image i holds the value i (mod 256) everywhere and label i: batches reveal their indices."""
    images = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageData(
        images=images, labels=torch.arange(n), classes=[str(i) for i in range(n)], name="indexed"
    )


class TensorDataset(Dataset):
    """Streams the images of an in-memory ImageData one by one."""

    def __init__(self, data: ImageData) -> None:
        assert data.images is not None
        self.images, self.labels = data.images, data.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def streaming(data: ImageData) -> ImageData:
    return ImageData(images=None, labels=data.labels, classes=data.classes, dataset=TensorDataset(data))


def indices(loader: BatchLoader, epoch: int, start_batch: int = 0) -> list[list[int]]:
    """The label (= index) lists of every batch of one epoch, checking images and labels agree."""
    batches = []
    for images, labels in loader.epoch(epoch, start_batch):
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert torch.equal(images[:, 0, 0, 0], (labels % 256).to(torch.uint8))
        batches.append(labels.tolist())
    return batches


def flat(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


def test_every_sample_once_without_drop_last() -> None:
    loader = BatchLoader(indexed_data(23), batch_size=5, drop_last=False, seed=1)
    batches = indices(loader, 0)
    assert len(loader) == len(batches) == 5 and [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(flat(batches)) == list(range(23))


def test_drop_last_drops_the_remainder() -> None:
    loader = BatchLoader(indexed_data(23), batch_size=5, drop_last=True, seed=1)
    batches = indices(loader, 0)
    assert len(loader) == len(batches) == 4 and all(len(b) == 5 for b in batches)
    assert len(set(flat(batches))) == 20
    assert flat(batches) == epoch_order(23, 0, seed=1)[:20].tolist()


def test_order_depends_on_epoch_and_seed_only() -> None:
    data = indexed_data(64)
    loader = BatchLoader(data, batch_size=8, seed=5)
    assert indices(loader, 0) != indices(loader, 1)
    assert indices(loader, 3) == indices(BatchLoader(data, batch_size=8, seed=5), 3)
    assert indices(loader, 0) != indices(BatchLoader(data, batch_size=8, seed=6), 0)
    expected = torch.randperm(64, generator=torch.Generator().manual_seed(5 * 1_000_003 + 2))
    assert flat(indices(loader, 2)) == expected.tolist()


def test_no_shuffle_is_dataset_order() -> None:
    loader = BatchLoader(indexed_data(10), batch_size=4, shuffle=False, drop_last=False)
    assert indices(loader, 7) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_two_ranks_concatenate_to_one_rank() -> None:
    data = indexed_data(50)
    single = indices(BatchLoader(data, batch_size=8, seed=2), 4)
    ranks = [indices(BatchLoader(data, batch_size=8, seed=2, rank=r, world_size=2), 4) for r in range(2)]
    assert all(len(b) == 4 for shard in ranks for b in shard)
    assert [a + b for a, b in zip(*ranks, strict=True)] == single


def test_start_batch_resumes_the_same_sequence() -> None:
    loader = BatchLoader(indexed_data(40), batch_size=6, seed=3)
    full = indices(loader, 1)
    assert indices(loader, 1, start_batch=4) == full[4:]
    assert indices(loader, 1, start_batch=len(loader)) == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_matches_in_memory(num_workers: int) -> None:
    data = indexed_data(30)
    memory = BatchLoader(data, batch_size=4, seed=9, rank=1, world_size=2)
    stream = BatchLoader(streaming(data), batch_size=4, seed=9, rank=1, world_size=2, num_workers=num_workers)
    assert len(memory) == len(stream) == 7
    for epoch in (0, 1):
        assert indices(stream, epoch) == indices(memory, epoch)
    # Abandoning an epoch half-way, then resuming one, must not leak batches across epochs.
    next(iter(stream.epoch(5)))
    assert indices(stream, 2, start_batch=3) == indices(memory, 2, start_batch=3)


def test_streaming_without_drop_last_yields_the_tail() -> None:
    data = indexed_data(11)
    stream = BatchLoader(streaming(data), batch_size=4, shuffle=False, drop_last=False, num_workers=0)
    assert indices(stream, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]


def test_errors_name_the_numbers() -> None:
    data = indexed_data(10)
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by world_size 4"):
        BatchLoader(data, batch_size=6, world_size=4)
    with pytest.raises(ValueError, match="has 10 images, fewer than one global batch of 16"):
        BatchLoader(data, batch_size=16)
    with pytest.raises(NotImplementedError):
        BatchLoader(data, batch_size=4, drop_last=False, world_size=2)
    with pytest.raises(ValueError, match="rank 2"):
        BatchLoader(data, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start_batch"):
        BatchLoader(data, batch_size=4).epoch(0, start_batch=-1)
    assert len(BatchLoader(data, batch_size=16, drop_last=False)) == 1
