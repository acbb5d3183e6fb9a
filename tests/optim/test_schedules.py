"""LR scaling and warmup + cosine, as in the official WarmUpAndCosineDecay (SPEC.md section 4)."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch

from simclrv2.optim import scale_learning_rate, set_learning_rate, warmup_cosine


def test_scaling_values() -> None:
    assert scale_learning_rate(0.1, 4096, "sqrt") == pytest.approx(6.4)  # SimCLRv2 pretraining
    assert scale_learning_rate(0.005, 1024, "sqrt") == pytest.approx(0.16)  # fine-tuning R50 1×
    assert scale_learning_rate(0.3, 4096, "linear") == pytest.approx(4.8)  # SimCLR v1
    assert scale_learning_rate(0.1, 256, "linear") == pytest.approx(0.1)
    assert scale_learning_rate(0.05, 512, "none") == 0.05


def test_scaling_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="scaling"):
        scale_learning_rate(0.1, 256, "cubic")
    with pytest.raises(ValueError, match="batch_size"):
        scale_learning_rate(0.1, 0, "sqrt")


def test_endpoints() -> None:
    total, warmup, peak = 1000, 50, 6.4
    assert warmup_cosine(0, total, warmup, peak) == 0.0  # TF: step / warmup_steps · lr
    assert warmup_cosine(25, total, warmup, peak) == pytest.approx(3.2)
    assert warmup_cosine(warmup, total, warmup, peak) == pytest.approx(peak)
    assert warmup_cosine(total, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(total + 10, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)  # clamped
    # Half-way through the decay, cosine gives half the peak.
    assert warmup_cosine(warmup + (total - warmup) // 2, total, warmup, peak) == pytest.approx(peak / 2)


def test_monotone_in_each_phase() -> None:
    total, warmup, peak = 200, 20, 1.0
    lrs = [warmup_cosine(s, total, warmup, peak) for s in range(total + 1)]
    warm, decay = lrs[: warmup + 1], lrs[warmup:]
    assert all(b > a for a, b in pairwise(warm))
    assert all(b < a for a, b in pairwise(decay))
    assert max(lrs) == pytest.approx(peak)


def test_matches_tf_formula() -> None:
    # tf2/model.py WarmUpAndCosineDecay with tf.keras CosineDecay(scaled_lr, total - warmup), alpha = 0.
    total, warmup, peak = 97, 7, 0.3
    for step in range(total + 3):
        if step < warmup:
            expected = step / warmup * peak
        else:
            decay_steps = total - warmup
            expected = peak * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))
        assert warmup_cosine(step, total, warmup, peak) == pytest.approx(expected, abs=1e-15)


def test_no_warmup_starts_at_peak() -> None:
    # Fine-tuning uses no warmup: the cosine starts at once.
    assert warmup_cosine(0, 100, 0, 0.16) == pytest.approx(0.16)
    assert warmup_cosine(100, 100, 0, 0.16) == pytest.approx(0.0, abs=1e-12)


def test_rejects_impossible_schedules() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine(0, 10, 10, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0, 0, 0, 1.0)
    with pytest.raises(ValueError, match="step"):
        warmup_cosine(-1, 10, 2, 1.0)


def test_set_learning_rate_sets_every_group() -> None:
    a, b = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 5.0}], lr=1.0)
    set_learning_rate(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
