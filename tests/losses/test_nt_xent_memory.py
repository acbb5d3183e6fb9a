"""NT-Xent with a memory of negatives: equal to NT-Xent without one, a numpy reference, closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simclrv2.losses import nt_xent, nt_xent_with_memory


def reference_with_memory(z_a: np.ndarray, z_b: np.ndarray, memory: np.ndarray, temperature: float) -> float:
    """Algorithm 1 of the paper with loops in float64, every memory row an extra negative of every anchor."""
    n = z_a.shape[0]
    z = np.empty((2 * n, z_a.shape[1]), dtype=np.float64)
    z[0::2] = z_a
    z[1::2] = z_b
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    keys = memory / np.linalg.norm(memory, axis=1, keepdims=True)

    def pair_loss(i: int, j: int) -> float:
        batch = sum(math.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        queue = sum(math.exp(z[i] @ key / temperature) for key in keys)
        return -math.log(math.exp(z[i] @ z[j] / temperature) / (batch + queue))

    return sum(pair_loss(2 * k, 2 * k + 1) + pair_loss(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


@pytest.mark.parametrize(
    ("batch", "dim", "queue", "temperature"),
    [(1, 3, 1, 0.5), (4, 8, 5, 0.1), (7, 5, 16, 0.5), (3, 4, 40, 1.0)],
)
def test_matches_numpy_reference(batch: int, dim: int, queue: int, temperature: float) -> None:
    rng = np.random.default_rng(batch * 1000 + queue)
    z_a, z_b = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    memory = rng.normal(size=(queue, dim)) * 3.0  # not normalised: the loss normalises the keys
    expected = reference_with_memory(z_a, z_b, memory, temperature)
    t = [torch.from_numpy(x).float() for x in (z_a, z_b, memory)]
    loss = nt_xent_with_memory(t[0], t[1], t[2], temperature)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # The memory really enters: the same views without it give another value.
    assert abs(nt_xent(t[0], t[1], temperature).item() - expected) > 1e-3


def test_empty_memory_is_exactly_nt_xent_value_and_gradient() -> None:
    torch.manual_seed(0)
    z_a, z_b = torch.randn(6, 8), torch.randn(6, 8)
    plain_a, plain_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    plain = nt_xent(plain_a, plain_b, 0.2)
    plain.backward()
    for memory in (None, torch.empty(0, 8), torch.randn(10, 8)[:0]):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        loss = nt_xent_with_memory(a, b, memory, 0.2)
        loss.backward()
        assert torch.equal(loss, plain)
        assert a.grad is not None and b.grad is not None
        assert torch.equal(a.grad, plain_a.grad) and torch.equal(b.grad, plain_b.grad)


@pytest.mark.parametrize(("batch", "queue"), [(1, 1), (3, 10), (8, 64)])
def test_identical_embeddings_give_log_of_all_candidates(batch: int, queue: int) -> None:
    # Every similarity is 1: the positive is one of 2N - 1 + Q equal logits.
    v = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    z = v.repeat(batch, 1)
    loss = nt_xent_with_memory(z, z.clone(), v.repeat(queue, 1) * 0.1, 0.5)
    assert loss.item() == pytest.approx(math.log(2 * batch - 1 + queue), abs=1e-5)


def test_no_gradient_reaches_the_memory_and_fp32_under_autocast() -> None:
    torch.manual_seed(1)
    z_a, z_b = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
    memory = torch.randn(32, 16, requires_grad=True)
    loss = nt_xent_with_memory(z_a, z_b, memory, 0.1)
    loss.backward()
    assert memory.grad is None
    assert z_a.grad is not None and torch.isfinite(z_a.grad).all()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = nt_xent_with_memory(z_a, z_b, memory.bfloat16(), 0.1)
    assert under_autocast.dtype == torch.float32
    expected = nt_xent_with_memory(z_a, z_b, memory.bfloat16().float(), 0.1)
    assert torch.allclose(under_autocast, expected, rtol=1e-6, atol=1e-6)


def test_a_memory_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="projection size"):
        nt_xent_with_memory(torch.randn(4, 8), torch.randn(4, 8), torch.randn(5, 7), 0.1)
    with pytest.raises(ValueError, match=r"\(Q, D\)"):
        nt_xent_with_memory(torch.randn(4, 8), torch.randn(4, 8), torch.randn(8), 0.1)
