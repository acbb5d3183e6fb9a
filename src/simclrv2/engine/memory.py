"""The paper's optional MoCo-style memory (SPEC 3): a queue of negatives encoded by an EMA of the encoder.

SimCLRv2 (Chen et al. 2020, section 2) adds "a memory network whose output is used as negative examples",
as in MoCo: an exponential moving average of backbone + projection head (decay 0.999) encodes every batch, and
its projections are kept in a first-in-first-out queue of 65,536 keys. The paper reports about +1% linear
evaluation for ResNet-50 on ImageNet; the official public code does not include it. How this implementation
works, and the decisions it takes where the paper is silent:

- **Negatives** for each anchor: the other embeddings of the current global batch, exactly as without memory
  (from the online network, gradients through :func:`~simclrv2.distributed.gather_with_grad`), plus every
  valid key of the queue (:func:`~simclrv2.losses.nt_xent_with_memory`). The positive is still the other
  view from the online network: keys are only ever negatives.
- **Order within a step**: online forward -> loss with the queue as it stands -> backward -> optimiser step
  -> EMA update from the new online weights -> the EMA encoder encodes both views of the current batch ->
  the keys (L2-normalised, fp32) are gathered from all ranks (:func:`~simclrv2.distributed.gather_no_grad`)
  and enqueued. A batch's keys are therefore negatives from the *next* step on.
- **The queue starts empty** and only filled rows are used (MoCo initialises it with random unit vectors and
  uses them as negatives from step 0; random directions carry no information and bias the early loss). The
  ring buffer writes any number of keys at any position (it wraps mid-batch), so its size need not be a
  multiple of the keys per step; when one step brings more keys than the queue holds, the newest are kept.
- **EMA parameters**: ``ema = d * ema + (1 - d) * online`` after every optimiser step, starting from a copy of
  the online network; the EMA encoder never requires or receives gradients and is not in the optimiser.
- **EMA BatchNorm**: the EMA encoder runs in training mode on the key batch (both views in one pass, as the
  online network sees them), so its BN normalises with the key batch's statistics, as MoCo's key encoder
  does. Its running statistics (used when the EMA encoder is evaluated or fine-tuned) are its *own*, updated
  by those forward passes (MoCo's choice: its momentum update covers parameters only); copying or averaging
  the online network's statistics would pair the EMA weights with another network's activation statistics.
- **No shuffle-BN.** MoCo shuffles the key batch across GPUs because its positive key is computed in the same
  BN batch as the query and BN statistics would leak which key is the positive. Here the keys of a batch are
  never positives (and never negatives of the anchors they were computed with), so there is nothing to leak.
  Under DDP the EMA encoder is a copy of the online model *after* its BatchNorms became SyncBatchNorm, so the
  keys use global BN statistics like the online network (SPEC 3).
- **Cost**: one extra forward pass (no backward) per step, the EMA update, and a (2N x Q) similarity matmul;
  the queue is Q x D fp32 (65,536 x 128: 32 MiB). Measured numbers are in ``docs/memory.md``.
- **Checkpoint**: the EMA weights and buffers, the queue and its pointer/fill count are saved under
  ``"memory"`` in the pretraining checkpoint, so resume is exact. :func:`pretrained_state` reads either
  network's weights from a checkpoint (``--use-ema`` in fine-tuning, linear evaluation and kNN).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.checkpoint import CheckpointError
from simclrv2.distributed import gather_no_grad
from simclrv2.engine.runtime import autocast

__all__ = ["KeyQueue", "MomentumMemory", "ema_update_", "pretrained_state"]

MEMORY_KEY = "memory"
"""Where a pretraining checkpoint keeps :meth:`MomentumMemory.state_dict` (absent when memory is off)."""


@torch.no_grad()
def ema_update_(ema: nn.Module, online: nn.Module, decay: float) -> None:
    """``p_ema = decay * p_ema + (1 - decay) * p_online`` for every parameter, in place.

    Parameters are matched by name (the two modules must have the same structure). Buffers are left alone:
    the EMA encoder's BatchNorm statistics come from its own forward passes (see the module docstring).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    pairs = list(zip(ema.named_parameters(), online.named_parameters(), strict=True))
    for (name_e, p_e), (name_o, p_o) in pairs:
        if name_e != name_o or p_e.shape != p_o.shape:
            raise ValueError(
                f"EMA and online parameters differ: {name_e} {tuple(p_e.shape)} vs "
                f"{name_o} {tuple(p_o.shape)}; build the EMA as a copy of the online model"
            )
    ema_params: list[Tensor] = [p for (_, p), _ in pairs]
    online_params = [p.detach() for _, (_, p) in pairs]
    # The multi-tensor ops do the same two roundings as mul_ then add_(alpha=...), in a few kernel launches.
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, online_params, alpha=1.0 - decay)


class KeyQueue(nn.Module):
    """A FIFO ring buffer of ``size`` keys of dimension ``dim`` that starts empty.

    ``keys`` is a buffer (it moves with ``.to()`` and is in the state dict); the write position and the
    number of valid rows are host integers (kept in the state dict as extra state), so reading the valid
    rows never synchronises with the device. Rows are written in order from row 0, so until the queue is
    full the valid rows are ``keys[:filled]``, and afterwards all of them.
    """

    keys: Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a key queue needs size >= 1 and dim >= 1, got size={size}, dim={dim}")
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim))
        self.ptr = 0
        self.filled = 0

    def valid(self) -> Tensor:
        """The filled rows (0 rows before the first enqueue)."""
        return self.keys[: self.filled]

    @torch.no_grad()
    def push(self, keys: Tensor) -> None:
        """Append ``keys`` (n, dim) at the write position, wrapping around; the oldest rows are overwritten.

        With n > size only the newest ``size`` keys are kept (as if all n had been written in turn).
        """
        n = keys.shape[0]
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must be (n, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        start = self.ptr
        if n > self.size:
            start = (start + n - self.size) % self.size
            keys = keys[n - self.size :]
        keys = keys.to(self.keys.dtype)
        first = min(keys.shape[0], self.size - start)
        self.keys[start : start + first] = keys[:first]
        if first < keys.shape[0]:
            self.keys[: keys.shape[0] - first] = keys[first:]
        self.ptr = (self.ptr + n) % self.size
        self.filled = min(self.size, self.filled + n)

    @torch.no_grad()
    def enqueue(self, local_keys: Tensor) -> None:
        """Gather ``local_keys`` from every rank (rank order, no gradient) and push them: under DDP every
        rank holds the same queue. Every rank must call it (a collective)."""
        self.push(gather_no_grad(local_keys))

    def get_extra_state(self) -> dict[str, int]:
        return {"ptr": self.ptr, "filled": self.filled, "size": self.size}

    def set_extra_state(self, state: Mapping[str, int]) -> None:
        if int(state["size"]) != self.size:
            raise CheckpointError(
                f"the checkpoint's queue holds {state['size']} keys but memory.size is {self.size}; "
                f"resume with --set memory.size={state['size']}"
            )
        self.ptr, self.filled = int(state["ptr"]), int(state["filled"])

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.keys.shape[1]}, filled={self.filled}"


class MomentumMemory(nn.Module):
    """The EMA encoder (backbone + projection head) and the queue of its keys (see the module docstring).

    Args:
        model: the online model (a :class:`~simclrv2.models.SimCLRModel`, already on its device and, under
            DDP, with SyncBatchNorm); its ``forward`` returns a list whose last entry is z.
        size: queue length in keys (> 0).
        dim: the dimension of z.
        decay: EMA decay d in [0, 1).
    """

    def __init__(self, model: nn.Module, size: int, dim: int, decay: float) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"memory.ema_decay must be in [0, 1), got {decay}")
        self.encoder = copy.deepcopy(model).requires_grad_(False)
        self.encoder.train()
        self.decay = decay
        device = next(model.parameters()).device
        self.queue = KeyQueue(size, dim).to(device)

    def negatives(self) -> Tensor:
        """The valid queue rows: the memory negatives for the next loss."""
        return self.queue.valid()

    def train(self, mode: bool = True) -> MomentumMemory:
        # The EMA encoder only ever encodes key batches, always with batch statistics (as MoCo's key
        # encoder); evaluation code that wants running statistics switches a copy or the encoder itself.
        super().train(mode)
        self.encoder.train()
        return self

    @torch.no_grad()
    def update(self, online: nn.Module, views: Tensor, device: torch.device, precision: str) -> Tensor:
        """After an optimiser step: move the EMA towards ``online``, encode ``views`` (this rank's 2N images,
        the batch just trained on) with the EMA encoder in training mode, and enqueue the normalised keys
        from all ranks. Returns this rank's keys (fp32, normalised)."""
        ema_update_(self.encoder, online, self.decay)
        self.encoder.train()
        with autocast(device, precision):
            z = self.encoder(views)[-1]
        keys = F.normalize(z.float(), dim=1)
        self.queue.enqueue(keys)
        return keys


def pretrained_state(ckpt: Mapping[str, Any], use_ema: bool, path: str | Path = "") -> dict[str, Tensor]:
    """The pretrained network's weights from a pretraining checkpoint, as ``model.backbone.*`` /
    ``model.head.*`` keys (what :func:`~simclrv2.models.load_pretrained_into` reads).

    ``use_ema=False``: the online network (plus the online probe ``classifier.*``, which loaders drop).
    ``use_ema=True``: the EMA encoder of a run pretrained with ``memory.size > 0``; a checkpoint without one
    raises :class:`CheckpointError` saying so.
    """
    if not use_ema:
        return dict(ckpt["model"])
    memory = ckpt.get(MEMORY_KEY)
    if not memory:
        raise CheckpointError(
            f"{path or 'the checkpoint'} has no EMA encoder: it was pretrained without the memory "
            "(memory.size=0). Drop --use-ema (use_ema=false), or pretrain with --set memory.size=65536."
        )
    prefix = "encoder."
    return {"model." + k[len(prefix) :]: v for k, v in memory.items() if k.startswith(prefix)}
