"""Learning-rate scaling and schedules: pure functions of the global step (SPEC.md section 4).

The schedule follows the official SimCLR code, ``WarmUpAndCosineDecay`` in
google-research/simclr ``tf2/model.py`` (``learning_rate_schedule`` in the TF1 ``model_util.py``
is the same): the step is the only schedule state, so resuming needs only the step.
"""

from __future__ import annotations

import math

import torch

__all__ = ["scale_learning_rate", "set_learning_rate", "warmup_cosine"]

_SCALINGS = ("linear", "sqrt", "none")


def scale_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
    """Peak learning rate from the base rate and the global batch size (SPEC.md section 4).

    ``"linear"``: base·B/256; ``"sqrt"``: base·√B (SimCLRv2 pretraining: 0.1·√4096 = 6.4);
    ``"none"``: base unchanged.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be a positive global batch size, got {batch_size}.")
    if scaling == "linear":
        return base_lr * batch_size / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise ValueError(f"Unknown learning-rate scaling {scaling!r}; expected one of {_SCALINGS}.")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, peak_lr: float) -> float:
    """Linear warmup then cosine decay to 0, exactly as the official ``WarmUpAndCosineDecay``.

    * ``step < warmup_steps``: ``step / warmup_steps · peak_lr`` (so 0 at step 0: TF's first update
      is a no-op, kept for fidelity);
    * otherwise: ``peak_lr · ½(1 + cos(π · min(step − warmup_steps, decay) / decay))`` with
      ``decay = total_steps − warmup_steps``: ``peak_lr`` at the end of warmup, 0 at
      ``step = total_steps`` and after (TF's ``CosineDecay`` clamps the step, alpha = 0).

    ``step`` counts optimiser updates from 0. With ``warmup_steps = 0`` the cosine starts at once.
    Note that TF's ``get_train_steps`` makes ``total_steps = num_examples·epochs // B + 1`` and
    ``warmup_steps = round(warmup_epochs·num_examples // B)``; computing those is the caller's job.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}.")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps) = [0, {total_steps}), got {warmup_steps}; "
            "shorten the warmup or train longer."
        )
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    if step < warmup_steps:
        return step / warmup_steps * peak_lr
    decay_steps = total_steps - warmup_steps
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group (call once per step, before ``optimizer.step()``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
