"""NT-Xent: numpy reference (paper Algorithm 1), closed forms, precision, and 2 ranks == 1 rank."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simclrv2.losses import NTXentLoss, nt_xent


def algorithm1_reference(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """The paper's Algorithm 1 written with loops, in float64.

    Samples are interleaved as z_{2k-1} = a_k, z_{2k} = b_k; s_ij is the cosine similarity;
    l(i, j) = -log(exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ)); L = 1/(2N) Σ_k [l(2k-1, 2k) + l(2k, 2k-1)].
    """
    n = z_a.shape[0]
    z = np.empty((2 * n, z_a.shape[1]), dtype=np.float64)
    z[0::2] = z_a
    z[1::2] = z_b

    def sim(i: int, j: int) -> float:
        return float(z[i] @ z[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z[j])))

    def pair_loss(i: int, j: int) -> float:
        denominator = sum(math.exp(sim(i, k) / temperature) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(i, j) / temperature) / denominator)

    total = sum(pair_loss(2 * k, 2 * k + 1) + pair_loss(2 * k + 1, 2 * k) for k in range(n))
    return total / (2 * n)


@pytest.mark.parametrize(
    ("batch", "dim", "temperature"), [(1, 3, 0.5), (4, 8, 0.1), (7, 5, 0.5), (16, 32, 1.0)]
)
def test_matches_numpy_reference(batch: int, dim: int, temperature: float) -> None:
    rng = np.random.default_rng(batch * 100 + dim)
    z_a = rng.normal(size=(batch, dim))
    z_b = rng.normal(size=(batch, dim))
    expected = algorithm1_reference(z_a, z_b, temperature)
    loss = nt_xent(torch.from_numpy(z_a).float(), torch.from_numpy(z_b).float(), temperature)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("batch", [1, 2, 3, 8, 32])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_identical_embeddings_give_log_2n_minus_1(batch: int, temperature: float) -> None:
    # Every similarity is 1, so each anchor's positive is one of 2N-1 equal logits.
    z = torch.ones(batch, 4) * torch.tensor([1.0, -2.0, 0.5, 3.0])
    loss = nt_xent(z, z.clone(), temperature)
    assert loss.item() == pytest.approx(math.log(2 * batch - 1), abs=1e-5)


def test_symmetric_in_the_two_views() -> None:
    torch.manual_seed(0)
    z_a, z_b = torch.randn(10, 16), torch.randn(10, 16)
    assert torch.allclose(nt_xent(z_a, z_b, 0.2), nt_xent(z_b, z_a, 0.2), atol=1e-6)


def test_scale_invariant_because_rows_are_normalised() -> None:
    torch.manual_seed(1)
    z_a, z_b = torch.randn(6, 8), torch.randn(6, 8)
    scales = torch.rand(6, 1) * 10 + 0.1
    assert torch.allclose(nt_xent(z_a, z_b, 0.5), nt_xent(z_a * scales, z_b, 0.5), atol=1e-5)


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_two_sample_closed_form(temperature: float) -> None:
    # a1 = b1 = e, a2 = b2 = -e: each anchor has its positive at similarity 1 and two negatives
    # at -1, so every term is -log(e^{1/τ} / (e^{1/τ} + 2e^{-1/τ})) = log(1 + 2e^{-2/τ}).
    e = torch.tensor([[0.6, 0.8]])
    z = torch.cat([e, -e])
    expected = math.log1p(2 * math.exp(-2 / temperature))
    assert nt_xent(z, z.clone(), temperature).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_lower_temperature_lowers_loss_when_positives_are_separated() -> None:
    # Orthonormal rows, positives identical: positive similarity 1, negatives 0, so the loss is
    # log(1 + (2N-2)e^{-1/τ}), increasing in τ. abs=1e-6: fp32 log-softmax of logits up to 1/τ = 20.
    n = 6
    z = torch.eye(n)
    losses = [nt_xent(z, z.clone(), t).item() for t in (0.05, 0.1, 0.5, 1.0, 2.0)]
    for t, value in zip((0.05, 0.1, 0.5, 1.0, 2.0), losses, strict=True):
        assert value == pytest.approx(math.log1p((2 * n - 2) * math.exp(-1 / t)), rel=1e-5, abs=1e-6)
    assert losses == sorted(losses)


def test_gradient_is_finite_even_for_degenerate_inputs() -> None:
    torch.manual_seed(2)
    for z_a, z_b in [
        (torch.randn(8, 16), torch.randn(8, 16)),
        (torch.ones(8, 16), torch.ones(8, 16)),  # all identical
        (torch.cat([torch.zeros(1, 16), torch.randn(7, 16)]), torch.randn(8, 16)),  # a zero row
    ]:
        z_a.requires_grad_()
        z_b.requires_grad_()
        loss = nt_xent(z_a, z_b, 0.1)
        loss.backward()
        assert torch.isfinite(loss)
        assert z_a.grad is not None and torch.isfinite(z_a.grad).all()
        assert z_b.grad is not None and torch.isfinite(z_b.grad).all()


def test_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(3)
    z_a, z_b = torch.randn(32, 64), torch.randn(32, 64)
    reference = nt_xent(z_a, z_b, 0.1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under_autocast = nt_xent(z_a, z_b, 0.1)
        # bf16 projections (what a bf16 head produces) are upcast before the similarities.
        from_bf16 = nt_xent(z_a.bfloat16(), z_b.bfloat16(), 0.1)
    assert under_autocast.dtype == torch.float32
    assert from_bf16.dtype == torch.float32
    assert torch.allclose(under_autocast, reference, rtol=1e-6, atol=1e-6)
    assert torch.allclose(from_bf16, nt_xent(z_a.bfloat16().float(), z_b.bfloat16().float(), 0.1))


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.randn(4, 8), torch.randn(5, 8), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), 0.0)


def test_module_wrapper() -> None:
    torch.manual_seed(4)
    z_a, z_b = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.equal(NTXentLoss(0.3)(z_a, z_b), nt_xent(z_a, z_b, 0.3))


# ----------------------------------------------------------------------------------------------
# Two processes (gloo, CPU) against one process on the full batch.


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _two_rank_worker(
    rank: int, world_size: int, port: int, z_a: torch.Tensor, z_b: torch.Tensor, out_dir: str
) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        local = z_a.shape[0] // world_size
        rows = slice(rank * local, (rank + 1) * local)
        a = z_a[rows].clone().requires_grad_()
        b = z_b[rows].clone().requires_grad_()
        loss = nt_xent(a, b, 0.2)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_a": a.grad, "grad_b": b.grad}, Path(out_dir) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_rank(tmp_path: Path) -> None:
    """2 ranks × B/2 == 1 rank × B, for the loss and for the gradient w.r.t. the embeddings.

    Each rank's loss is the mean over its own anchors, so the global loss is the mean of the rank
    losses; DDP averages gradients over ranks, so rank r's gradient divided by the world size must
    equal the single-process gradient of its rows. This only holds if the gather sums gradients.
    """
    world_size, batch = 2, 8
    generator = torch.Generator().manual_seed(5)
    z_a = torch.randn(batch, 16, generator=generator)
    z_b = torch.randn(batch, 16, generator=generator)

    mp.spawn(_two_rank_worker, args=(world_size, _free_port(), z_a, z_b, str(tmp_path)), nprocs=world_size)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(world_size)]

    a = z_a.clone().requires_grad_()
    b = z_b.clone().requires_grad_()
    loss = nt_xent(a, b, 0.2)
    loss.backward()
    assert a.grad is not None and b.grad is not None

    mean_rank_loss = torch.stack([r["loss"] for r in results]).mean()
    assert torch.allclose(mean_rank_loss, loss.detach(), atol=1e-6)
    assert torch.allclose(torch.cat([r["grad_a"] for r in results]) / world_size, a.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["grad_b"] for r in results]) / world_size, b.grad, atol=1e-6)
