"""Rank helpers and gathers: single-process fallbacks, and a 2-process gloo run."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.multiprocessing as mp
from torch import nn

from simclrv2 import distributed


def test_helpers_without_process_group() -> None:
    assert not distributed.is_distributed()
    assert distributed.get_rank() == 0
    assert distributed.get_world_size() == 1
    assert distributed.is_main_process()
    distributed.barrier()  # a no-op, must not raise


def test_gathers_are_identity_without_process_group() -> None:
    t = torch.randn(3, 4, requires_grad=True)
    assert distributed.gather_with_grad(t) is t
    no_grad = distributed.gather_no_grad(t)
    assert torch.equal(no_grad, t)
    assert not no_grad.requires_grad


def test_sync_batchnorm_only_with_several_processes() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert distributed.convert_sync_batchnorm(model) is model
    assert isinstance(model[1], nn.BatchNorm1d) and not isinstance(model[1], nn.SyncBatchNorm)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        rows = 3
        # Rank r holds rows filled with r + 1; the loss weights the gathered rows differently on
        # every rank, so the expected gradient needs the contributions of all ranks.
        local = torch.full((rows, 2), float(rank + 1), requires_grad=True)
        weights = torch.arange(world_size * rows * 2, dtype=torch.float32).reshape(-1, 2) * (rank + 1)
        gathered = distributed.gather_with_grad(local)
        (gathered * weights).sum().backward()

        # The same computation through torch's (deprecated) reference implementation.
        reference_local = local.detach().clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            reference = torch.cat(dist_fn.all_gather(reference_local))
        (reference * weights).sum().backward()

        no_grad = distributed.gather_no_grad(local)
        distributed.barrier()
        bn_model = distributed.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(2)))
        torch.save(
            {
                "rank": distributed.get_rank(),
                "world_size": distributed.get_world_size(),
                "is_main": distributed.is_main_process(),
                "gathered": gathered.detach(),
                "grad": local.grad,
                "reference_grad": reference_local.grad,
                "no_grad": no_grad,
                "no_grad_requires_grad": no_grad.requires_grad,
                "global_bn": isinstance(bn_model[0], distributed.GlobalBatchNorm),  # CPU model: ours
            },
            Path(out_dir) / f"{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes(tmp_path: Path) -> None:
    world_size, rows = 2, 3
    mp.spawn(_worker, args=(world_size, _free_port(), str(tmp_path)), nprocs=world_size)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(world_size)]

    expected_gathered = torch.cat([torch.full((rows, 2), float(r + 1)) for r in range(world_size)])
    base_weights = torch.arange(world_size * rows * 2, dtype=torch.float32).reshape(-1, 2)
    # d(sum over ranks k of <gathered, weights_k>)/d(local_r) = sum_k weights_k[rows of r].
    summed_weights = sum(base_weights * (k + 1) for k in range(world_size))
    assert isinstance(summed_weights, torch.Tensor)
    for r, result in enumerate(results):
        assert result["rank"] == r
        assert result["world_size"] == world_size
        assert result["is_main"] == (r == 0)
        assert torch.equal(result["gathered"], expected_gathered)
        assert torch.equal(result["grad"], summed_weights[r * rows : (r + 1) * rows])
        assert torch.equal(result["grad"], result["reference_grad"])
        assert torch.equal(result["no_grad"], expected_gathered)
        assert not result["no_grad_requires_grad"]
        assert result["global_bn"]
