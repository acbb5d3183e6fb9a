"""Distillation loss of SimCLRv2's third stage (SPEC.md section 6; paper section 2, eq. 2 and 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["distillation_loss"]


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    labels: Tensor | None = None,
    alpha: float = 1.0,
) -> Tensor:
    """Cross-entropy of the student against the teacher's softened distribution (SPEC.md section 6).

    Args:
        student_logits: (B, K) logits of the student (any float dtype).
        teacher_logits: (B, K) logits of the frozen teacher; detached here, so no gradient ever
            reaches the teacher even if the caller forgot ``torch.no_grad()``.
        temperature: τ > 0 applied to both student and teacher (paper: 0.1 for
            self-distillation, 1.0 for big-to-small).
        labels: optional (B,) int64 class indices, ``-1`` for unlabeled rows. Required when
            ``alpha < 1``; ignored when ``alpha == 1``.
        alpha: weight of the distillation term in [0, 1]; 1 (the default) is the paper's
            unlabeled-only setting.

    Returns:
        A float32 scalar
        ``L_total = (1 − α)·CE(student_logits, labels) + α·L_distill`` with
        ``L_distill = mean_x −Σ_y P_T(y|x; τ) log P_S(y|x; τ)`` and ``P = softmax(logits / τ)``.
        CE is the plain (τ = 1) cross-entropy averaged over the labeled rows (``ignore_index=-1``);
        it is 0 when the batch has no labeled row. Both terms are computed in fp32 with autocast
        disabled, whatever the input dtype or autocast state.

    Normalisation: the paper (eq. 2, 3) writes sums over examples; we average over the batch (and
    over the labeled rows for CE), which only rescales the learning rate.

    No τ² factor: Hinton et al. (2015) multiply the soft-target term by τ² so that its gradient
    magnitude stays comparable to the hard-label term as τ changes. SimCLRv2's eq. 2 has no such
    factor, so we do not add one either; with τ = 0.1 the
    factor would shrink the distillation term 100-fold relative to the paper's settings.
    """
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"distillation_loss expects student and teacher logits of the same (B, K) shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; check that both "
            "networks have the same number of classes."
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; the paper uses 0.1 or 1.0.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}; 1 = distillation only, 0 = labels only.")
    if alpha < 1.0:
        if labels is None:
            raise ValueError(
                f"alpha = {alpha} < 1 mixes in a labeled cross-entropy, so labels are required; "
                "pass labels (-1 for unlabeled rows) or set alpha = 1."
            )
        if labels.shape != student_logits.shape[:1]:
            raise ValueError(
                f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}."
            )

    # fp32 with autocast off: at τ = 0.1 the logits are scaled 10-fold and bf16 softmax / log-softmax
    # would lose the small teacher probabilities that carry the "dark knowledge".
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        student = student_logits.float()
        total = student.new_zeros(())
        if alpha > 0.0:
            teacher_probs = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
            student_log_probs = F.log_softmax(student / temperature, dim=1)
            distill = -(teacher_probs * student_log_probs).sum(dim=1).mean()
            total = total + alpha * distill
        if alpha < 1.0:
            assert labels is not None  # checked above
            # Sum / count instead of reduction="mean": a batch with no labeled row gives 0, not NaN.
            per_row = F.cross_entropy(student, labels, ignore_index=-1, reduction="none")
            num_labeled = (labels != -1).sum().clamp(min=1)
            total = total + (1.0 - alpha) * (per_row.sum() / num_labeled)
        return total
