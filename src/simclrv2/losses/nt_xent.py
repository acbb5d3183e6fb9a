"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (SPEC.md section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.distributed import gather_with_grad, get_rank

__all__ = ["NTXentLoss", "nt_xent", "nt_xent_with_memory"]

# Added to the self-similarity logits instead of -inf: exp() of it is exactly 0 in fp32, and a
# finite value keeps log-softmax NaN-free (the official TF code uses LARGE_NUM = 1e9 the same way).
_MASK_VALUE = -1e9


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float) -> Tensor:
    """NT-Xent loss of two views, with negatives from every rank (SPEC.md section 3).

    Args:
        z_a: (B_local, D) projections of view a (any float dtype; normalised here).
        z_b: (B_local, D) projections of view b; row i is the positive of row i of ``z_a``.
        temperature: τ > 0 (0.1 for SimCLRv2 on ImageNet, 0.5 is usual for CIFAR-size data).

    Returns:
        A float32 scalar: the mean over all 2·B_local local anchors of the cross-entropy of the
        positive against 1 positive + 2·(B_global − 1) negatives, i.e. (CE_a + CE_b) / 2.

    Rows are L2-normalised, then ``a`` and ``b`` are gathered from every rank with
    :func:`~simclrv2.distributed.gather_with_grad`. For anchor i of view a on rank r the logits are
    ``[a_i·b_allᵀ | a_i·a_allᵀ] / τ`` with the self-similarity a_i·a_i masked out, and the target is
    column r·B_local + i (b_i); view b is symmetric. Similarities and log-softmax run in fp32 with
    autocast disabled, whatever the input dtype or autocast state.

    Normalisation: this is the paper's Algorithm 1 (mean over the 2N anchors). The official TF
    ``add_contrastive_loss`` returns ``mean(loss_a + loss_b)`` = CE_a + CE_b, **twice** this value.
    Under LARS the factor does not cancel into the learning rate alone: for trust-ratio-adapted
    parameters the update is scale-free in g′ = g + wd·w, so halving the loss acts like doubling
    the weight decay; for the excluded parameters (biases, BN, classifier) it halves the step.
    To reproduce the TF runs exactly, optimise ``2 * nt_xent(...)``.

    Under DDP, each rank's loss is the mean over its own anchors; DDP's gradient averaging then
    gives the gradient of the global-batch loss (see ``gather_with_grad``).
    """
    return _nt_xent(z_a, z_b, temperature, None)


def nt_xent_with_memory(z_a: Tensor, z_b: Tensor, memory: Tensor | None, temperature: float) -> Tensor:
    """NT-Xent whose negatives also include a memory of keys (the paper's MoCo-style queue, SPEC 3).

    Args:
        z_a, z_b: as in :func:`nt_xent` (this rank's two views; the positives come from them).
        memory: (Q, D) keys used as extra negatives for every anchor, e.g. the valid rows of
            :class:`~simclrv2.engine.memory.MomentumMemory`'s queue (the EMA encoder's projections of
            past batches). Detached and L2-normalised here; identical on every rank, so it is not
            gathered. ``None`` or zero rows: exactly :func:`nt_xent` (the same logits and the same value).

    Returns:
        A float32 scalar: the mean over the 2·B_local local anchors of the cross-entropy of the positive
        against 1 positive + 2·(B_global − 1) in-batch negatives + Q memory negatives. For anchor a_i the
        logits are ``[a_i·b_allᵀ | a_i·a_allᵀ (self masked) | a_i·memoryᵀ] / τ``; view b is symmetric.
        Same normalisation, precision (fp32, autocast off) and cross-rank gradient as :func:`nt_xent`;
        no gradient reaches the memory.
    """
    return _nt_xent(z_a, z_b, temperature, memory)


def _nt_xent(z_a: Tensor, z_b: Tensor, temperature: float, memory: Tensor | None) -> Tensor:
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(
            f"nt_xent expects two (B, D) tensors of the same shape, got {tuple(z_a.shape)} and "
            f"{tuple(z_b.shape)}; flatten the projections and pass the two views separately."
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if memory is not None and (memory.ndim != 2 or memory.shape[1] != z_a.shape[1]):
        raise ValueError(
            f"the memory must be a (Q, D) tensor with D = {z_a.shape[1]} (the projection size), got "
            f"{tuple(memory.shape)}; pass the queue's valid rows, or None for no memory."
        )

    # fp32 with autocast off: under bf16 the logits (up to 1/τ = 10) and the log-sum-exp over
    # thousands of negatives lose digits that matter for the loss and its gradient.
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        dtype = torch.promote_types(z_a.dtype, torch.float32)  # fp32, or fp64 when given fp64
        a = F.normalize(z_a.to(dtype), dim=1)
        b = F.normalize(z_b.to(dtype), dim=1)
        a_all = gather_with_grad(a)
        b_all = gather_with_grad(b)

        batch_local = a.shape[0]
        # Global index of each local row: the positive's column and the self-similarity's column.
        index = torch.arange(batch_local, device=a.device) + get_rank() * batch_local
        self_mask = F.one_hot(index, a_all.shape[0]).bool()

        inv_t = 1.0 / temperature
        logits_ab = (a @ b_all.T) * inv_t
        logits_aa = ((a @ a_all.T) * inv_t).masked_fill(self_mask, _MASK_VALUE)
        logits_ba = (b @ a_all.T) * inv_t
        logits_bb = ((b @ b_all.T) * inv_t).masked_fill(self_mask, _MASK_VALUE)

        parts_a, parts_b = [logits_ab, logits_aa], [logits_ba, logits_bb]
        if memory is not None and memory.shape[0] > 0:
            keys = F.normalize(memory.detach().float(), dim=1)
            parts_a.append((a @ keys.T) * inv_t)
            parts_b.append((b @ keys.T) * inv_t)

        loss_a = F.cross_entropy(torch.cat(parts_a, dim=1), index)
        loss_b = F.cross_entropy(torch.cat(parts_b, dim=1), index)
        return 0.5 * (loss_a + loss_b)


class NTXentLoss(nn.Module):
    """Module wrapper of :func:`nt_xent` holding the temperature."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = temperature

    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        return nt_xent(z_a, z_b, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
