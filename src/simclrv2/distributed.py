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
    "GlobalBatchNorm",
    "barrier",
    "convert_sync_batchnorm",
    "gather_no_grad",
    "gather_uneven",
    "gather_with_grad",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "reduce_mean",
    "shard_range",
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


@torch.no_grad()
def reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over ranks (a new tensor; no gradient); the identity in one process.

    For logging: each rank's loss is the mean over its own anchors, so with equal shards the mean over
    ranks is the loss of the global batch, the number a single process would log.
    """
    if get_world_size() == 1:
        return tensor.detach()
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (evaluation sharding).

    The first ``n % world_size`` ranks get one item more, so every item belongs to exactly one rank and the
    rank-order concatenation of the shares is ``range(n)``: gathering per-rank results with
    :func:`gather_uneven` restores dataset order with no duplicate and no padding row.
    """
    rank = get_rank() if rank is None else rank
    world = get_world_size() if world_size is None else world_size
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@torch.no_grad()
def gather_uneven(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 when ranks hold different numbers of rows.

    ``all_gather`` needs equal shapes, so every rank pads to the largest row count, gathers, and drops the
    padding using the gathered row counts: the result has exactly ``sum(rows)`` rows, rank 0's first. Every
    rank gets the whole result (no gradient). The identity without a process group.
    """
    if get_world_size() == 1:
        return tensor.detach()
    tensor = tensor.contiguous()
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = gather_no_grad(rows).tolist()
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = gather_no_grad(padded)
    return torch.cat([gathered[r * longest : r * longest + c] for r, c in enumerate(counts)])


def barrier() -> None:
    """Synchronise all ranks; a no-op without a process group."""
    if is_distributed():
        dist.barrier()


def convert_sync_batchnorm(model: nn.Module, device_type: str | None = None) -> nn.Module:
    """Return ``model`` with every BatchNorm computing global-batch statistics when world size > 1.

    Global BN (SPEC.md section 3): statistics over the global batch, head included, so the model cannot
    cheat through per-device batch statistics. On CUDA this is torch's ``SyncBatchNorm`` (NCCL, fused
    kernels); elsewhere :class:`GlobalBatchNorm`, because torch's SyncBatchNorm refuses CPU tensors and
    gloo is the CPU backend. Only ``_BatchNorm`` subclasses are converted, so custom normalisation modules
    must be built from ``nn.BatchNorm*`` to be covered. With a single process the model is returned
    unchanged (there is nothing to synchronise). ``device_type`` defaults to the device of the model's
    first parameter.
    """
    if get_world_size() == 1:
        return model
    if device_type is None:
        device_type = next((p.device.type for p in model.parameters()), "cpu")
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return GlobalBatchNorm.convert(model)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all ranks, for any backend (gloo on CPU included).

    Why our own: ``nn.SyncBatchNorm`` raises on CPU tensors, and multi-process CPU training (gloo) is a
    supported setup (tests, CPU clusters). Semantics follow SyncBatchNorm: in training mode with more than
    one rank, each rank computes its per-channel count, mean and sum of squared deviations (``var_mean``,
    numerically stable), the ranks exchange them through :func:`gather_with_grad` (so the backward sums every
    rank's gradient with respect to the statistics, exactly as if the global batch were on one device), and
    Chan's parallel formula combines them. Running statistics use the unbiased global variance. In eval mode,
    or with one rank, it is plain BatchNorm. The statistics and the normalisation run in float32 (the output
    is cast back to the input's dtype), as torch's BN does under autocast.

    Accepts (N, C) and (N, C, *) inputs, so it replaces BatchNorm1d and BatchNorm2d alike.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if not (self.training and get_world_size() > 1):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        x = input.to(torch.promote_types(input.dtype, torch.float32))  # fp32 (fp64 stays fp64)
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        count = torch.full((1,), x.numel() / x.shape[1], dtype=x.dtype, device=x.device)
        stats = gather_with_grad(torch.cat([count, mean, var * count]).unsqueeze(0))  # (world, 1 + 2C)
        channels = mean.shape[0]
        counts, means, m2s = stats[:, :1], stats[:, 1 : 1 + channels], stats[:, 1 + channels :]
        total = counts.sum()
        global_mean = (counts * means).sum(0) / total
        global_var = (m2s + counts * (means - global_mean) ** 2).sum(0) / total
        if self.track_running_stats:
            self._update_running_stats(global_mean.detach(), global_var.detach(), float(total.detach()))
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(global_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(x.dtype)
        y = (x - global_mean.view(shape)) * scale.view(shape)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype).view(shape)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: float) -> None:
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        self.num_batches_tracked.add_(1)
        momentum = (
            1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        )  # momentum None = cumulative moving average, as in _BatchNorm
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
        self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every ``_BatchNorm`` replaced by a GlobalBatchNorm sharing its parameters and
        buffers (what ``SyncBatchNorm.convert_sync_batchnorm`` does for GPUs). β stays absent where the
        original has none (the head's scale-only BN)."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            out = cls(
                module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    if module.bias is None:
                        out.register_parameter("bias", None)
                    else:
                        out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
        for name, child in module.named_children():
            out.add_module(name, cls.convert(child))
        return out
