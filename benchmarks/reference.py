"""The "typical PyTorch SimCLR recipe" the benchmark compares against (issue 5).

What most public PyTorch SimCLR repositories do (e.g. sthalles/SimCLR, leftthomas/SimCLR, Spijkervet/SimCLR,
the lightly tutorials): keep the images as an array, turn each one into a PIL image in ``__getitem__`` and run
torchvision's per-image transforms twice (``RandomResizedCrop``, ``RandomHorizontalFlip``,
``RandomApply(ColorJitter(0.8s, 0.8s, 0.8s, 0.2s), p=0.8)``, ``RandomGrayscale(p=0.2)``, Gaussian blur for
large crops, ``ToTensor``) in ``DataLoader`` worker processes; then an fp32, NCHW training loop with
``model(torch.cat([x1, x2]))``, the loss, ``backward()`` and a LARS implemented as a Python loop over the
parameters.

To compare speed and not recipes, the reference trains *our* model with *our* NT-Xent objective
(``2 * nt_xent``, see :func:`simclrv2.engine.pretrain.contrastive_step`) and the same LARS update rule
(:class:`LoopLARS` is :class:`simclrv2.optim.LARS` written the usual way, one parameter at a time); the
tests check that :func:`reference_step` and the fast path's ``contrastive_step`` compute the same loss and
the same updated weights on the same views. What differs is only how: PIL per image in workers vs batched
tensor ops, fp32 vs bf16 autocast, NCHW vs channels-last, a per-parameter loop vs ``torch._foreach_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from simclrv2.losses import nt_xent

__all__ = [
    "LoopLARS",
    "PILTwoViewDataset",
    "RepeatingBatchSampler",
    "make_reference_loader",
    "reference_step",
    "reference_transform",
    "typical_nt_xent",
]


def reference_transform(crop_size: int, color_strength: float, blur: bool) -> Callable[[Image.Image], Tensor]:
    """The per-image SimCLR pipeline of the typical repository (sthalles/SimCLR's
    ``get_simclr_pipeline_transform``), with the same strength, crop scale and blur switch as ours."""
    s = color_strength
    steps: list[Any] = [
        transforms.RandomResizedCrop(crop_size, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
    ]
    if blur:
        kernel = 2 * ((crop_size // 10) // 2) + 1
        steps.append(transforms.RandomApply([transforms.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    steps.append(transforms.ToTensor())
    return transforms.Compose(steps)


class PILTwoViewDataset(Dataset):
    """uint8 ``(N, C, H, W)`` images held as a numpy array (like torchvision's CIFAR10), converted to an RGB
    PIL image per item and augmented twice; returns ``(view1, view2, label)``."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as PIL wants it
        self.labels = labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        array = self.images[index]
        img = (
            Image.fromarray(array[..., 0], mode="L").convert("RGB")
            if array.shape[-1] == 1
            else (Image.fromarray(np.ascontiguousarray(array)))
        )
        return self.transform(img), self.transform(img), int(self.labels[index])


class RepeatingBatchSampler(Sampler[list[int]]):
    """Random batches (drop_last, fresh permutation per pass over the data), ``batches_per_iter`` of them
    per ``iter()``: the benchmark takes a fixed number of steps per repetition from persistent workers,
    which then sit idle (nothing is prefetched while the other path is being timed)."""

    def __init__(self, n: int, batch_size: int, batches_per_iter: int, seed: int = 0) -> None:
        super().__init__()
        self.n, self.batch_size, self.batches_per_iter = n, batch_size, batches_per_iter
        self.generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def __len__(self) -> int:
        return self.batches_per_iter

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.batches_per_iter):
            if len(self._order) < self.batch_size:
                self._order = torch.randperm(self.n, generator=self.generator).tolist()
            batch, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
            yield batch


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # what DataLoader does anyway; explicit for clarity


def make_reference_loader(
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    crop_size: int,
    color_strength: float,
    blur: bool,
    num_workers: int,
    batches_per_iter: int,
    seed: int = 0,
    pin_memory: bool = False,
) -> tuple[DataLoader, RepeatingBatchSampler]:
    """The typical repository's loader: per-image PIL transforms in ``num_workers`` processes."""
    dataset = PILTwoViewDataset(images, labels, reference_transform(crop_size, color_strength, blur))
    sampler = RepeatingBatchSampler(len(dataset), batch_size, batches_per_iter, seed)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
    return loader, sampler


def reference_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x1: Tensor, x2: Tensor, temperature: float
) -> Tensor:
    """The typical loop body: fp32, NCHW, both views in one forward pass, loss, backward, step.

    ``model`` is a :class:`simclrv2.models.SimCLRModel` (its forward returns ``[h, ..., z]``); the objective
    is the fast path's, ``2 * nt_xent`` (TF scaling, SPEC 3). Returns the detached NT-Xent loss.
    """
    x = torch.cat([x1, x2])
    z = model(x)[-1]
    n = x1.shape[0]
    loss = nt_xent(z[:n], z[n:], temperature)
    optimizer.zero_grad()
    (2.0 * loss).backward()
    optimizer.step()
    return loss.detach()


def typical_nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent as typical repositories write it (sthalles/SimCLR ``info_nce_loss``): the (2N, 2N) cosine
    similarity matrix, the diagonal removed, the positive moved to column 0, cross-entropy. An independent
    formula for the tests, so that "the same function" is checked against more than our own code."""
    z = nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    same = (labels[:, None] == labels[None, :]).float()
    sim = z @ z.T
    eye = torch.eye(2 * n, dtype=torch.bool)
    same = same[~eye].view(2 * n, -1)
    sim = sim[~eye].view(2 * n, -1)
    positives = sim[same.bool()].view(2 * n, 1)
    negatives = sim[~same.bool()].view(2 * n, -1)
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return nn.functional.cross_entropy(logits, torch.zeros(2 * n, dtype=torch.long))


class LoopLARS(torch.optim.Optimizer):
    """:class:`simclrv2.optim.LARS` (the same update, the same per-group flags) written the way most PyTorch
    LARS implementations are: a Python loop over parameters, a few small kernels each."""

    def __init__(
        self, params: Any, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": eta,
            "weight_decay_enabled": True,
            "lars_adaptation": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay_enabled"] and group["weight_decay"] != 0:
                    g = g.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    w_norm, g_norm = torch.norm(p), torch.norm(g)
                    ratio = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm.clamp_min(1e-30),
                        torch.ones_like(w_norm),
                    )
                    g = g * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(buf)
