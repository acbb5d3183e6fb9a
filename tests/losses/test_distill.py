"""Distillation loss: numpy reference, closed forms, teacher detachment, precision, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simclrv2.losses import distillation_loss


def distill_reference(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """SPEC.md section 6 with loops in float64: mean_x −Σ_y P_T(y|x; τ) log P_S(y|x; τ)."""
    total = 0.0
    for s_row, t_row in zip(student.astype(np.float64), teacher.astype(np.float64), strict=True):
        t_exp = [math.exp(v / temperature) for v in t_row]
        s_exp = [math.exp(v / temperature) for v in s_row]
        t_norm, s_norm = sum(t_exp), sum(s_exp)
        total -= sum((te / t_norm) * math.log(se / s_norm) for te, se in zip(t_exp, s_exp, strict=True))
    return total / student.shape[0]


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0])
def test_matches_numpy_reference(temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=gen)
    teacher = torch.randn(6, 5, generator=gen)
    loss = distillation_loss(student, teacher, temperature)
    expected = distill_reference(student.numpy(), teacher.numpy(), temperature)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(8, 4, generator=gen)
    teacher = torch.randn(8, 4, generator=gen)
    labels = torch.tensor([0, 3, -1, 2, -1, 1, 1, -1])
    loss = distillation_loss(student, teacher, 0.1, labels=labels, alpha=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(student, labels, ignore_index=-1))


def test_mix_is_convex_combination() -> None:
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(8, 4, generator=gen)
    teacher = torch.randn(8, 4, generator=gen)
    labels = torch.tensor([0, 3, -1, 2, -1, 1, 1, -1])
    alpha, tau = 0.3, 0.5
    mixed = distillation_loss(student, teacher, tau, labels=labels, alpha=alpha)
    expected = (1 - alpha) * F.cross_entropy(student, labels, ignore_index=-1) + alpha * (
        distillation_loss(student, teacher, tau)
    )
    torch.testing.assert_close(mixed, expected)


def test_no_labeled_rows_gives_distillation_only() -> None:
    student, teacher = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.full((4,), -1)
    mixed = distillation_loss(student, teacher, 1.0, labels=labels, alpha=0.5)
    assert torch.isfinite(mixed)
    torch.testing.assert_close(mixed, 0.5 * distillation_loss(student, teacher, 1.0))


@pytest.mark.parametrize("temperature", [0.1, 1.0])
def test_identical_logits_give_teacher_entropy(temperature: float) -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    probs = torch.softmax(logits / temperature, dim=1)
    entropy = -(probs * probs.log()).sum(dim=1).mean()
    loss = distillation_loss(logits.float(), logits.float(), temperature)
    assert loss.item() == pytest.approx(entropy.item(), rel=1e-5, abs=1e-6)
    # The uniform row alone: entropy log K.
    uniform = distillation_loss(torch.zeros(1, 7), torch.zeros(1, 7), temperature)
    assert uniform.item() == pytest.approx(math.log(7), rel=1e-6)


def test_teacher_gets_no_gradient() -> None:
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, -1, 2, 3, -1])
    distillation_loss(student, teacher, 0.1, labels=labels, alpha=0.5).backward()
    assert teacher.grad is None
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_fp32_under_bf16_autocast() -> None:
    student = torch.randn(4, 10, dtype=torch.bfloat16)
    teacher = torch.randn(4, 10, dtype=torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = distillation_loss(student, teacher, 0.1, labels=torch.tensor([1, -1, 3, 4]), alpha=0.5)
    assert loss.dtype == torch.float32
    expected = distillation_loss(student.float(), teacher.float(), 0.1, torch.tensor([1, -1, 3, 4]), 0.5)
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1.0, "alpha": 1.5}, "alpha"),
        ({"temperature": 1.0, "alpha": -0.1}, "alpha"),
        ({"temperature": 1.0, "alpha": 0.5}, "labels are required"),
        ({"temperature": 1.0, "alpha": 0.5, "labels": torch.zeros(3, dtype=torch.long)}, "labels must"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        distillation_loss(torch.randn(4, 3), torch.randn(4, 3), **kwargs)  # type: ignore[arg-type]


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same"):
        distillation_loss(torch.randn(4, 3), torch.randn(4, 5), 1.0)
