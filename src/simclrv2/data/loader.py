"""Deterministic, resumable, rank-sharded batches of uint8 images.

One epoch's order is a function of (seed, epoch) only, drawn on a CPU generator, so every rank and every
device sees the same permutation; each rank takes its slice of every *global* batch. Together these give:
N ranks == 1 rank with the same global batch (the per-rank batches concatenate to the single-rank one),
and exact resume mid-epoch (skip the first `start_batch` batches without reading them).

In-memory data follows airbench (STYLE.md, lesson 12): the whole uint8 tensor lives on the device and
batches are gathered with `index_select` there, with no DataLoader and no workers. Streaming data goes
through a DataLoader whose batch sampler produces exactly the same per-rank index lists.

Streamed photos (image folders) can also be cropped by the loader (``crops``: SPEC 5's random-resized crop
of the whole image, in the workers): the batch sampler draws every box of a global batch from a CPU
generator seeded by (seed, epoch, batch), keeps this rank's rows, and the workers decode and render them
(:mod:`simclrv2.data.photos`). The crops are then a function of the seed and the batch only, whatever the
number of workers or ranks, so resume stays exact; colour distortion stays batched on the device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from simclrv2.data.augment import sample_crop_boxes_per_image
from simclrv2.data.datasets import ImageData


@dataclass(frozen=True)
class CropSpec:
    """Random-resized crops for the loader to take (SPEC 5): ``views`` crops of every image, each resized to
    ``size`` x ``size``, area fraction in ``scale``, aspect ratio in ``ratio``, flipped with ``flip_p``.
    Batches then hold view 0 of every image of the shard, then view 1, and so on."""

    size: int
    views: int = 1
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5


STREAM_EPOCH = -1
"""The ``epoch`` of :func:`crop_generator` for the repeated stream (``BatchLoader(stream=True)``): its
batches are numbered by step across epochs."""


def crop_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The CPU generator of the crop boxes of global batch ``batch`` of ``epoch``."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_000_033 + batch) * 7 + 3)


def _base_dataset(dataset: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """The dataset under any ``Subset`` wrappers and the map from subset positions to its indices."""
    index = None
    while isinstance(dataset, Subset):
        sub = np.asarray(dataset.indices, dtype=np.int64)
        index = sub if index is None else sub[index]
        dataset = dataset.dataset
    return dataset, index


def crop_source(data: ImageData) -> tuple[Dataset, np.ndarray] | None:
    """(the dataset that renders crops, subset position -> its index) when ``data`` streams from one that
    can (:class:`~simclrv2.data.datasets.ImageFolderDataset` with the image sizes), else None."""
    if data.dataset is None:
        return None
    base, index = _base_dataset(data.dataset)
    if not getattr(base, "supports_crops", False):
        return None
    return base, np.arange(len(base), dtype=np.int64) if index is None else index  # type: ignore[arg-type]


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool = True) -> Tensor:
    """The order of the `n` samples in `epoch`: a permutation from a CPU generator, the same on every rank."""
    if not shuffle:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def shard_indices(order: Tensor, batch: int, batch_size: int, rank: int, world_size: int) -> Tensor:
    """Rank `rank`'s rows of global batch `batch` of an epoch order: [rank*b, (rank+1)*b), b = B/world_size.

    The last global batch may be partial (only with world_size 1, see BatchLoader).
    """
    local = batch_size // world_size
    start = batch * batch_size + rank * local
    return order[start : min(start + local, len(order))]


def stream_indices(
    n: int,
    step: int,
    batch_size: int,
    seed: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    orders: dict[int, Tensor] | None = None,
) -> Tensor:
    """Rank `rank`'s rows of global batch `step` of the *repeated* stream: the epoch orders of
    :func:`epoch_order` concatenated, cut into consecutive global batches that run across epoch ends.

    This is the official code's ``dataset.repeat()`` + ``batch(drop_remainder=True)``: no image is dropped at
    an epoch's end, so every image is seen once per epoch of the stream (a batch may straddle two epochs), and
    step ``s`` is a pure function of ``s`` (exact resume). ``orders`` caches epoch orders between calls (pass
    the same dict for consecutive steps; epochs behind the current batch are dropped from it).
    """
    orders = {} if orders is None else orders
    local = batch_size // world_size
    start = step * batch_size + rank * local
    first, last = start // n, (start + local - 1) // n
    for e in [e for e in orders if e < first]:
        del orders[e]
    for e in range(first, last + 1):
        if e not in orders:
            orders[e] = epoch_order(n, e, seed, shuffle)
    offset = start - first * n
    return torch.cat([orders[e] for e in range(first, last + 1)])[offset : offset + local]


class _ShardBatchSampler(Sampler[list[int]]):
    """Yields this rank's index list of each global batch of one epoch; `epoch`/`start_batch` set per epoch.

    The DataLoader iterates the batch sampler in the main process, so setting the attributes before each
    `iter(loader)` takes effect even with persistent workers (like DistributedSampler.set_epoch).
    It holds plain numbers, not the BatchLoader: a reference cycle would keep the DataLoader (and its
    persistent workers) alive until the garbage collector runs, and a process exiting with live workers
    waits seconds for them.
    """

    def __init__(
        self, n: int, num_batches: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int
    ) -> None:
        super().__init__()
        self.n, self.num_batches, self.batch_size = n, num_batches, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        return max(self.num_batches - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.epoch, self.seed, self.shuffle)
        for i in range(self.start_batch, self.num_batches):
            yield shard_indices(order, i, self.batch_size, self.rank, self.world_size).tolist()


class _StreamBatchSampler(Sampler[list[int]]):
    """Yields this rank's index list of global batches ``start_step, start_step + 1, ...`` of the repeated
    stream (:func:`stream_indices`), ``num_steps`` of them; both are set before each ``iter(loader)``."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int) -> None:
        super().__init__()
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.start_step = 0
        self.num_steps = 0

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[list[int]]:
        orders: dict[int, Tensor] = {}
        for step in range(self.start_step, self.start_step + self.num_steps):
            idx = stream_indices(
                self.n, step, self.batch_size, self.seed, self.shuffle, self.rank, self.world_size, orders
            )
            yield idx.tolist()


class _CropKeys:
    """Crop keys ``(index, label, top, left, height, width, flip, size)`` (box as fractions of the whole
    image) of this rank's rows of one global batch, view-major: the boxes of all views of the whole global
    batch are drawn first (one generator per batch), then each rank keeps its rows, as the on-device
    augmentation does."""

    def __init__(
        self,
        batch_size: int,
        rank: int,
        world_size: int,
        spec: CropSpec,
        index: np.ndarray,
        sizes: np.ndarray,
        labels: np.ndarray,
    ) -> None:
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.spec, self.index, self.sizes, self.labels = spec, index, sizes, labels

    def __call__(self, batch: Tensor, gen: torch.Generator) -> list[tuple]:
        spec = self.spec
        positions = batch.numpy()
        base = self.index[positions]
        hw = torch.from_numpy(self.sizes[base]).to(torch.float64)
        local = self.batch_size // self.world_size
        rows = range(self.rank * local, min((self.rank + 1) * local, len(positions)))
        keys: list[tuple] = []
        for _ in range(spec.views):
            boxes = sample_crop_boxes_per_image(hw[:, 0], hw[:, 1], gen, spec.scale, spec.ratio)
            flips = torch.rand(len(positions), generator=gen) < spec.flip_p
            frac = boxes.to(torch.float64) / torch.cat([hw, hw], dim=1)  # top/H, left/W, h/H, w/W
            frac_rows, flip_rows = frac.tolist(), flips.tolist()
            for j in rows:
                top, left, bh, bw = frac_rows[j]
                keys.append(
                    (int(base[j]), int(self.labels[positions[j]]), top, left, bh, bw, flip_rows[j], spec.size)
                )
        return keys


class _CropBatchSampler(_ShardBatchSampler):
    """Crop keys (:class:`_CropKeys`) of this rank's rows of each global batch of one epoch."""

    def __init__(
        self, n: int, num_batches: int, batch_size: int, shuffle: bool, seed: int, keys: _CropKeys
    ) -> None:
        super().__init__(n, num_batches, batch_size, shuffle, seed, keys.rank, keys.world_size)
        self.keys = keys

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_order(self.n, self.epoch, self.seed, self.shuffle)
        for i in range(self.start_batch, self.num_batches):
            batch = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.keys(batch, crop_generator(self.seed, self.epoch, i))  # type: ignore[misc]


class _StreamCropBatchSampler(_StreamBatchSampler):
    """Crop keys (:class:`_CropKeys`) of this rank's rows of global batches of the repeated stream."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, keys: _CropKeys) -> None:
        super().__init__(n, batch_size, shuffle, seed, keys.rank, keys.world_size)
        self.keys = keys

    def __iter__(self) -> Iterator[list[int]]:
        orders: dict[int, Tensor] = {}
        for step in range(self.start_step, self.start_step + self.num_steps):
            batch = stream_indices(self.n, step, self.batch_size, self.seed, self.shuffle, orders=orders)
            yield self.keys(batch, crop_generator(self.seed, STREAM_EPOCH, step))  # type: ignore[misc]


class BatchLoader:
    """Yields global-batch shards for one rank, for in-memory or streaming data, in a deterministic order.

    Args:
        data: the split to iterate.
        batch_size: the GLOBAL batch size (all ranks together); must be divisible by `world_size`.
        device: where the batches are delivered (in-memory data is moved there once, here).
        shuffle: a fresh permutation per epoch (`epoch_order`); else dataset order.
        drop_last: drop the last partial global batch (training); without it the last batch is smaller
            (evaluation; world_size 1 only for now).
        seed: seed of the epoch permutations.
        rank, world_size: this process's shard of every global batch: rows [rank*b, (rank+1)*b), b = B/world.
        num_workers: decoding processes for streaming data (ignored for in-memory data).
        stream: iterate by step over the repeated epochs (:meth:`steps`, the official fine-tuning loop)
            instead of by epoch (:meth:`epoch`); ``drop_last`` does not apply.
        crops: streaming photos only: take these random-resized crops of the whole image in the loader
            (see the module docstring). Batches are then already cropped, ``views * B / world_size`` rows
            of ``(3, size, size)``, and :attr:`crops_in_loader` is True; in-memory data ignores it (the
            device crops whole batches).
    """

    def __init__(
        self,
        data: ImageData,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        stream: bool = False,
        crops: CropSpec | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by world_size {world_size}; "
                f"use a multiple of {world_size}"
            )
        if not drop_last and world_size > 1:
            # Splitting a partial last batch evenly over ranks (and un-padding the results) is a later issue.
            raise NotImplementedError("drop_last=False with world_size > 1 is a later issue")
        if drop_last and not stream and len(data) < batch_size:
            raise ValueError(
                f"{data.name or 'dataset'} has {len(data)} images, fewer than one global batch of "
                f"{batch_size} with drop_last: lower the batch size or use more data"
            )
        self.data = data
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.stream = stream

        self._images: Tensor | None = None
        self._labels: Tensor | None = None
        self._loader: DataLoader | None = None
        source = crop_source(data) if crops is not None else None
        self.crops_in_loader = source is not None
        """True when batches arrive cropped (``crops`` given and the data streams from image files)."""
        if data.images is not None:
            # Once, here: every later batch is an index_select on the device, no host-to-device copies.
            self._images = data.images.to(self.device)
            self._labels = data.labels.to(self.device)
        else:
            dataset = data.dataset
            self._sampler: _ShardBatchSampler | _StreamBatchSampler
            if source is not None:
                assert crops is not None
                dataset, index = source
                sizes = dataset.sizes  # type: ignore[attr-defined]
                keys = _CropKeys(batch_size, rank, world_size, crops, index, sizes, data.labels.numpy())
                if stream:
                    self._sampler = _StreamCropBatchSampler(len(data), batch_size, shuffle, seed, keys)
                else:
                    self._sampler = _CropBatchSampler(len(data), len(self), batch_size, shuffle, seed, keys)
            elif stream:
                self._sampler = _StreamBatchSampler(len(data), batch_size, shuffle, seed, rank, world_size)
            else:
                self._sampler = _ShardBatchSampler(
                    len(data), len(self), batch_size, shuffle, seed, rank, world_size
                )
            self._loader = DataLoader(
                dataset,  # type: ignore[arg-type]  # ImageData guarantees it is set when images is None
                batch_sampler=self._sampler,
                num_workers=num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=num_workers > 0,  # no worker restart (and re-import) every epoch
            )

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        n = len(self.data)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 images, int64 labels) on the device: this rank's shard of each global batch of `epoch`.

        `start_batch` skips the batches already done, for an exact resume mid-epoch; skipped batches are
        never read. Streaming data supports one epoch iterator at a time.
        """
        if self.stream:
            raise RuntimeError("a stream=True BatchLoader is iterated by step: use steps(), not epoch()")
        if start_batch < 0:  # checked here, eagerly: this method is not itself a generator
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        if self._loader is None:
            return self._epoch_in_memory(epoch, start_batch)
        return self._epoch_streaming(epoch, start_batch)

    def steps(self, start_step: int, num_steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 images, int64 labels) on the device: this rank's shard of global batches ``start_step`` to
        ``start_step + num_steps - 1`` of the repeated stream (``stream=True``; :func:`stream_indices`).
        Steps before ``start_step`` are never read (exact resume)."""
        if not self.stream:
            raise RuntimeError("steps() needs a BatchLoader made with stream=True")
        if start_step < 0 or num_steps < 0:
            raise ValueError(f"start_step and num_steps must be >= 0, got {start_step} and {num_steps}")
        if self._loader is None:
            return self._steps_in_memory(start_step, num_steps)
        assert isinstance(self._sampler, _StreamBatchSampler)
        self._sampler.start_step, self._sampler.num_steps = start_step, num_steps
        return self._iterate_loader()

    def _steps_in_memory(self, start_step: int, num_steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        assert self._images is not None and self._labels is not None
        orders: dict[int, Tensor] = {}
        for step in range(start_step, start_step + num_steps):
            idx = stream_indices(
                len(self.data), step, self.batch_size, self.seed, self.shuffle, self.rank, self.world_size,
                orders,
            ).to(self.device)  # fmt: skip
            yield self._images.index_select(0, idx), self._labels.index_select(0, idx)

    def _epoch_in_memory(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        assert self._images is not None and self._labels is not None
        order = epoch_order(len(self.data), epoch, self.seed, self.shuffle).to(self.device)  # once per epoch
        for i in range(start_batch, len(self)):
            idx = shard_indices(order, i, self.batch_size, self.rank, self.world_size)
            yield self._images.index_select(0, idx), self._labels.index_select(0, idx)

    def _epoch_streaming(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        assert isinstance(self._sampler, _ShardBatchSampler)
        self._sampler.epoch = epoch
        self._sampler.start_batch = start_batch
        return self._iterate_loader()

    def _iterate_loader(self) -> Iterator[tuple[Tensor, Tensor]]:
        assert self._loader is not None
        non_blocking = self.device.type == "cuda"  # pinned host memory: the copy overlaps compute
        for images, labels in self._loader:
            yield (
                images.to(self.device, non_blocking=non_blocking),
                labels.to(self.device, dtype=torch.int64, non_blocking=non_blocking),
            )
