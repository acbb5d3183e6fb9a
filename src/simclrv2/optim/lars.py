"""LARS with classic momentum, as in the official SimCLR code (SPEC.md section 4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

__all__ = ["LARS"]


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) with classic momentum (SPEC.md section 4).

    For every parameter w with gradient g, in each step::

        g′ = g + wd·w                      (if the group's weight decay is enabled)
        r  = η·‖w‖ / ‖g′‖                  (if the group's LARS adaptation is enabled;
                                            r = 1 when either norm is 0, or when disabled)
        v  ← m·v + lr·r·g′                 (v starts at 0)
        w  ← w − v

    This is the official TF ``LARSOptimizer`` with ``classic_momentum=True``, no Nesterov.

    Per-group flags, decided once by :func:`simclrv2.optim.param_groups` rather than guessed from
    names or shapes here: ``weight_decay_enabled`` and ``lars_adaptation`` (both default True).
    A group with both False is plain momentum SGD (biases, BN and the supervised classifier).
    The group's ``lr`` is read at every step; schedules set it through
    :func:`simclrv2.optim.set_learning_rate`.

    The step makes no host synchronisation: the trust ratio is chosen with ``torch.where`` on
    device tensors. Parameters whose ``grad`` is None are skipped (their momentum is untouched).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"LARS learning rate must be >= 0, got {lr}.")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS momentum must be in [0, 1), got {momentum}.")
        if weight_decay < 0.0:
            raise ValueError(f"LARS weight_decay must be >= 0, got {weight_decay}.")
        if trust_coefficient <= 0.0:
            raise ValueError(f"LARS trust_coefficient (η) must be > 0, got {trust_coefficient}.")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "weight_decay_enabled": True,
            "lars_adaptation": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one update; ``closure`` (optional) re-evaluates the loss with gradients enabled."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _update_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        buffers: list[Tensor] = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("LARS does not support sparse gradients; use dense embeddings.")
            state = self.state[p]
            if "momentum_buffer" not in state:
                # Zero start, like the TF "Momentum" slot: the first step is v = lr·r·g′.
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            buffers.append(state["momentum_buffer"])
        if not params:
            return

        weight_decay = group["weight_decay"]
        if group["weight_decay_enabled"] and weight_decay != 0.0:
            # Out of place: p.grad stays the raw gradient for the caller's clipping and logging.
            grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
        if group["lars_adaptation"]:
            ratios = _trust_ratios(params, grads, group["trust_coefficient"])
            grads = list(torch._foreach_mul(grads, ratios))

        # Classic momentum: the (scaled) learning rate goes into the buffer, not after it.
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, grads, alpha=group["lr"])
        torch._foreach_sub_(params, buffers)


def _trust_ratios(params: list[Tensor], grads: list[Tensor], eta: float) -> list[Tensor]:
    """r = η·‖w‖/‖g′‖ per tensor, and 1 where either norm is 0; on device, without a host sync.

    Norms and ratios are computed in at least fp32 (so bf16 weights get a precise ratio), then each
    ratio is cast to its gradient's dtype for the multiply.
    """
    w_norms = torch._foreach_norm(params)
    g_norms = torch._foreach_norm(grads)
    if len({n.device for n in w_norms}) == 1:
        # One group lives on one device in practice: a handful of kernels for all tensors at once
        # instead of a handful per tensor.
        dtype = torch.float64 if any(n.dtype == torch.float64 for n in w_norms) else torch.float32
        w = torch.stack([n.to(dtype) for n in w_norms])
        g = torch.stack([n.to(dtype) for n in g_norms])
        ratios = list(_ratio(w, g, eta).unbind(0))
    else:
        ratios = []
        for w_norm, g_norm in zip(w_norms, g_norms, strict=True):
            dtype = torch.promote_types(w_norm.dtype, torch.float32)
            ratios.append(_ratio(w_norm.to(dtype), g_norm.to(dtype), eta))
    return [r.to(grad.dtype) for r, grad in zip(ratios, grads, strict=True)]


def _ratio(w_norm: Tensor, g_norm: Tensor, eta: float) -> Tensor:
    # Dividing by a safe denominator keeps inf/NaN out of the unused branch of torch.where.
    safe_g = torch.where(g_norm > 0, g_norm, torch.ones_like(g_norm))
    ratio = eta * w_norm / safe_g
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
