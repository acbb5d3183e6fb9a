"""Rank helpers and cross-device gathers that also work without a process group.

Everything here degrades to the single-process answer when ``torch.distributed`` is unavailable
or not initialised (rank 0, world size 1, gathers are the identity), so training code can call
these functions unconditionally. :func:`init_from_env` starts the process group from torchrun's
environment and does nothing in a single process.

The one function that matters for correctness is :func:`gather_with_grad`: SimCLR's negatives
come from every device and the gradient must flow back to the rank that produced each row
(SPEC.md section 3).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "barrier",
    "convert_sync_batchnorm",
    "gather_no_grad",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
]


def init_from_env(device_type: str) -> bool:
    """Initialise the default process group from torchrun's environment; False in a single process.

    torchrun (or SLURM + torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.
    Backend: NCCL for CUDA, gloo for CPU. Each CUDA rank uses the GPU ``LOCAL_RANK``.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return True


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the default group; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and always without a process group): the rank that logs and saves."""
    return get_rank() == 0


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0, passing gradients back to every rank.

    Forward: ``cat([t_rank0, t_rank1, ...], dim=0)``; every rank must pass the same shape.
    Backward: the gradient of the concatenation is summed over ranks (all-reduce) and each rank
    receives its own slice, i.e. ``torch.distributed.nn.functional.all_gather`` semantics.

    Why the sum (SPEC.md section 3): rank r's rows are negatives in the loss of every other rank,
    so d(sum_k loss_k)/d(rows_r) has a term from every rank. A plain ``dist.all_gather`` drops all
    of them (its output has no gradient), and a gather that keeps only the local slice of the
    local gradient drops the terms from the other ranks; both are the commonest bug in peer code.
    With DDP averaging parameter gradients over ranks, summing here gives exactly the gradient of
    the mean of the per-rank losses, i.e. the single-process gradient on the global batch.

    Every rank must run the backward too (it holds a collective), as with any DDP loss.
    Without a process group (or with world size 1) this is the identity.

    Implementation note: ``torch.distributed.nn.functional.all_gather`` has exactly these
    semantics but is deprecated (FutureWarning on every call in torch 2.14), and its replacement
    (``_functional_collectives.all_gather_single``) is private and absent from older torch. The
    small autograd function below uses only the stable ``all_gather``/``all_reduce`` and is tested
    against the torch function (tests/test_distributed.py).
    """
    if get_world_size() == 1:
        return tensor
    out: Tensor = _GatherWithGrad.apply(tensor)
    return out


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward = all-reduce(sum) of the full gradient, then this rank's rows."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        tensor = tensor.contiguous()
        ctx.rows = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor)
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        # Clone: all_reduce works in place and autograd may still hold grad_output elsewhere.
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


@torch.no_grad()
def gather_no_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 without gradient (MoCo's concat_all_gather).

    Right for momentum queues and evaluation features, wrong for the contrastive loss (use
    :func:`gather_with_grad` there). The result is detached in the single-process case too, so
    behaviour does not depend on the world size.
    """
    if get_world_size() == 1:
        return tensor.detach()
    tensor = tensor.contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered, dim=0)


def barrier() -> None:
    """Synchronise all ranks; a no-op without a process group."""
    if is_distributed():
        dist.barrier()


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Return ``model`` with every BatchNorm replaced by SyncBatchNorm when world size > 1.

    Global BN (SPEC.md section 3): statistics over the global batch, head included, so the model
    cannot cheat through per-device batch statistics. Only ``_BatchNorm`` subclasses are converted,
    so custom normalisation modules must be built from ``nn.BatchNorm*`` to be covered.
    With a single process the model is returned unchanged (SyncBatchNorm would need a group).
    """
    if get_world_size() > 1:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
