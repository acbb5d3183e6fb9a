"""The MoCo-style memory: EMA update, the key queue, the pretraining step with it, exact resume, --use-ema,
and the enqueue across 2 gloo processes."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch import nn

from simclrv2.checkpoint import CheckpointError, load_checkpoint
from simclrv2.cli import main
from simclrv2.config import ConfigError, PipelineConfig, PretrainConfig, load_config
from simclrv2.engine.finetune import build_model_from_checkpoint
from simclrv2.engine.linear_eval import load_pretrained_backbone
from simclrv2.engine.memory import KeyQueue, MomentumMemory, ema_update_, pretrained_state
from simclrv2.engine.pretrain import PretrainModule, contrastive_step
from simclrv2.losses import nt_xent_with_memory
from simclrv2.models import ProjectionHead, SimCLRModel, create_backbone

TINY = [
    "data.name=synthetic",
    "data.synthetic_size=48",
    "model.backbone=r18_0.25x_sk0",
    "batch_size=16",
    "epochs=2",
    "optim.warmup_epochs=0.5",
    "precision=fp32",
    "log_every_steps=1",
    "eval.batch_size=64",
    "eval.knn_k=20",
    "eval.knn_every_epochs=0",
    # 32 keys per step into 80 rows: the third step wraps around mid-batch.
    "memory.size=80",
    "memory.ema_decay=0.9",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# --- EMA ------------------------------------------------------------------------------------------------


def test_ema_update_is_the_formula() -> None:
    ema, online = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():  # dyadic values: the formula is exact in fp32
        ema.weight.copy_(torch.tensor([[1.0, 2.0], [-4.0, 0.5]]))
        ema.bias.copy_(torch.tensor([0.25, -1.0]))
        online.weight.copy_(torch.tensor([[3.0, -2.0], [0.0, 0.5]]))
        online.bias.copy_(torch.tensor([1.25, 1.0]))
    ema_update_(ema, online, 0.75)
    assert torch.equal(ema.weight, torch.tensor([[1.5, 1.0], [-3.0, 0.5]]))
    assert torch.equal(ema.bias, torch.tensor([0.5, -0.5]))
    assert torch.equal(online.weight, torch.tensor([[3.0, -2.0], [0.0, 0.5]]))  # online untouched

    torch.manual_seed(0)
    ema, online = nn.Linear(5, 3), nn.Linear(5, 3)
    expected = [
        0.999 * e.detach() + 0.001 * o.detach()
        for e, o in zip(ema.parameters(), online.parameters(), strict=True)
    ]
    ema_update_(ema, online, 0.999)
    for p, e in zip(ema.parameters(), expected, strict=True):
        assert torch.allclose(p, e, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="differ"):
        ema_update_(nn.Linear(5, 3), nn.Linear(5, 4), 0.9)


def _tiny_model() -> SimCLRModel:
    backbone = create_backbone("r18_0.25x_sk0", small_images=True)
    return SimCLRModel(backbone, ProjectionHead(backbone.num_features, num_layers=2, out_dim=8))


def test_step_with_memory_updates_the_ema_without_gradient_and_enqueues_both_views() -> None:
    torch.manual_seed(0)
    module = PretrainModule(_tiny_model(), num_classes=None)
    memory = MomentumMemory(module.model, size=20, dim=8, decay=0.9)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    assert {id(p) for p in memory.parameters()}.isdisjoint(
        id(p) for g in optimizer.param_groups for p in g["params"]
    )
    assert not any(p.requires_grad for p in memory.parameters())
    views = torch.rand(8, 3, 8, 8)  # 4 images x 2 views
    labels = torch.zeros(4, dtype=torch.long)
    device = torch.device("cpu")

    ema_before = {k: v.clone() for k, v in memory.encoder.state_dict().items()}
    contrastive_step(module, optimizer, views, labels, 0.5, device, "fp32", False, memory)
    online = dict(module.model.named_parameters())
    for name, p in memory.encoder.named_parameters():
        assert p.grad is None and not p.requires_grad, name
        assert torch.allclose(p, 0.9 * ema_before[name] + 0.1 * online[name], rtol=1e-6, atol=1e-7), name
    # The EMA's BatchNorm ran in training mode on the key batch: its own running statistics moved.
    key = "backbone.stem.bn1.running_mean"
    assert not torch.equal(ema_before[key], memory.encoder.state_dict()[key])
    # The queue holds the EMA encoder's normalised z of both views (8 keys), computed after the update.
    assert memory.queue.filled == 8 and memory.queue.ptr == 8
    with torch.no_grad():
        reference = memory.encoder(views)[-1]  # training mode, same batch: same statistics
    assert torch.allclose(memory.negatives(), nn.functional.normalize(reference, dim=1), atol=1e-5)

    # The next step's loss uses those 8 keys as extra negatives.
    z = module.model(views)[-1]
    with_memory = nt_xent_with_memory(z[:4], z[4:], memory.negatives(), 0.5)
    loss, _ = contrastive_step(module, optimizer, views, labels, 0.5, device, "fp32", False, memory)
    assert torch.allclose(loss, with_memory.detach(), atol=1e-6)
    assert memory.queue.filled == 16


# --- queue ----------------------------------------------------------------------------------------------


def _rows(start: int, stop: int) -> torch.Tensor:
    return torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, 2)


def test_queue_is_fifo_and_wraps_around() -> None:
    queue = KeyQueue(size=5, dim=2)
    assert queue.valid().shape == (0, 2)  # starts empty: no uninitialised rows are negatives
    queue.push(_rows(0, 3))
    assert torch.equal(queue.valid(), _rows(0, 3)) and (queue.ptr, queue.filled) == (3, 3)
    queue.push(_rows(3, 6))  # wraps mid-batch: 5 overwrites the oldest row (0)
    assert torch.equal(queue.valid(), torch.cat([_rows(5, 6), _rows(1, 5)]))
    assert (queue.ptr, queue.filled) == (1, 5)
    queue.push(_rows(6, 13))  # more keys than rows: the newest 5, where sequential writes put them
    assert torch.equal(queue.valid(), torch.cat([_rows(10, 13), _rows(8, 10)]))
    assert queue.ptr == 3


def test_queue_matches_a_sequential_ring_buffer() -> None:
    gen = torch.Generator().manual_seed(0)
    queue, ring, ptr, count, seen = KeyQueue(size=7, dim=2), [None] * 7, 0, 0, 0
    for _ in range(30):
        n = int(torch.randint(0, 12, (), generator=gen))
        queue.push(_rows(seen, seen + n))
        for value in range(seen, seen + n):
            ring[ptr] = value
            ptr, count = (ptr + 1) % 7, min(7, count + 1)
        seen += n
        expected = torch.tensor([float(v) for v in ring[:count]])  # type: ignore[arg-type]
        assert torch.equal(queue.valid()[:, 0], expected)
        assert (queue.ptr, queue.filled) == (ptr, count)


def test_queue_state_round_trip_and_size_check() -> None:
    queue = KeyQueue(size=4, dim=2)
    queue.push(_rows(0, 6))
    copy = KeyQueue(size=4, dim=2)
    copy.load_state_dict(queue.state_dict())
    assert torch.equal(copy.keys, queue.keys) and (copy.ptr, copy.filled) == (2, 4)
    with pytest.raises(CheckpointError, match=r"memory\.size"):
        KeyQueue(size=8, dim=2).load_state_dict(queue.state_dict())


# --- config ---------------------------------------------------------------------------------------------


def test_memory_config_is_validated_and_read_from_a_pipeline_file(tmp_path: Path) -> None:
    assert PretrainConfig().memory.size == 0 and PretrainConfig().memory.ema_decay == 0.999
    with pytest.raises(ConfigError, match=r"memory\.size must be >= 0"):
        load_config(PretrainConfig, overrides=["memory.size=-1"])
    with pytest.raises(ConfigError, match=r"memory.ema_decay must be in \[0.0, 1.0\)"):
        load_config(PretrainConfig, overrides=["memory.ema_decay=1.0"])
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"pretrain": {"memory": {"size": 4096}}, "finetune": {"use_ema": True}}))
    config = load_config(PretrainConfig, path, ["memory.ema_decay=0.99"])
    assert (config.memory.size, config.memory.ema_decay) == (4096, 0.99)
    pipeline = load_config(PipelineConfig, path)
    assert pipeline.pretrain.memory.size == 4096 and pipeline.finetune.use_ema


# --- pretraining: checkpoint, exact resume, --use-ema -----------------------------------------------------


def test_resume_with_memory_reproduces_an_uninterrupted_run_exactly(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["pretrain", *_sets(*TINY, f"run_dir={full}")]) == 0
    assert main(["pretrain", *_sets(*TINY, f"run_dir={cut}", "max_steps=2")]) == 0
    at_step_2 = load_checkpoint(cut / "last.pt")
    assert main(["pretrain", "--resume", *_sets(*TINY, f"run_dir={cut}")]) == 0
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["memory"].keys() == b["memory"].keys()
    for key, value in a["memory"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["memory"][key]), key
        else:
            assert value == b["memory"][key], key
    assert a["memory"]["queue._extra_state"] == {"ptr": 32, "filled": 80, "size": 80}  # 6 x 32 keys
    assert at_step_2["memory"]["queue._extra_state"] == {"ptr": 64, "filled": 64, "size": 80}
    # The resumed steps moved the EMA and the queue, and the EMA is not the online network.
    key = "encoder.head.layers.0.linear.weight"
    assert not torch.equal(at_step_2["memory"][key], b["memory"][key])
    assert not torch.equal(at_step_2["memory"]["queue.keys"], b["memory"]["queue.keys"])
    assert not torch.equal(b["memory"][key], b["model"]["model.head.layers.0.linear.weight"])
    # Resuming with another memory setting is refused.
    assert main(["pretrain", "--resume", *_sets(*TINY, f"run_dir={cut}", "memory.size=0")]) == 2


def test_use_ema_loads_the_ema_encoder(
    tmp_path: Path, pretrained_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "pre"
    assert main(["pretrain", *_sets(*TINY, f"run_dir={run}", "max_steps=2")]) == 0
    ckpt = load_checkpoint(run / "last.pt")
    ema = pretrained_state(ckpt, use_ema=True)
    assert set(ema) == {k for k in ckpt["model"] if k.startswith("model.")}

    backbone, _ = load_pretrained_backbone(run / "last.pt", use_ema=True)
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, ckpt["memory"]["encoder.backbone." + name]), name
    online, _ = load_pretrained_backbone(run / "last.pt")
    assert not torch.equal(
        online.state_dict()["stem.conv1.weight"], backbone.state_dict()["stem.conv1.weight"]
    )

    ft = tmp_path / "ft"
    args = ["finetune", "--pretrained", str(run / "last.pt"), "--labels", "25%", "--use-ema"]
    ft_sets = _sets(
        "data.name=synthetic", "data.synthetic_size=96", "precision=fp32", "max_steps=1", "epochs=1"
    )
    assert main([*args, *_sets(f"run_dir={ft}"), *ft_sets]) == 0
    assert json.loads((ft / "results.json").read_text())["use_ema"] is True
    assert build_model_from_checkpoint(ft / "last.pt").num_head_layers == 1

    # A checkpoint pretrained without the memory has no EMA encoder: a clear error before any work.
    no_ema = ["finetune", "--pretrained", str(pretrained_checkpoint), "--use-ema"]
    assert main([*no_ema, *_sets(f"run_dir={tmp_path / 'x'}"), *ft_sets]) == 2
    assert "has no EMA encoder" in capsys.readouterr().err
    knn = [
        "knn",
        "--pretrained",
        str(pretrained_checkpoint),
        "--use-ema",
        *_sets(f"run_dir={tmp_path / 'k'}"),
    ]
    assert main([*knn, *ft_sets[:4]]) == 2
    assert "memory.size" in capsys.readouterr().err


# --- 2 processes (gloo) ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, world_size: int, port: int, z_a: torch.Tensor, z_b: torch.Tensor, out_dir: str
) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        queue = KeyQueue(size=10, dim=2)
        queue.enqueue(torch.full((3, 2), float(rank + 1)))  # 6 keys: 3 from each rank
        queue.enqueue(torch.full((3, 2), float(10 * (rank + 1))))  # 6 more: wraps around
        local = z_a.shape[0] // world_size
        rows = slice(rank * local, (rank + 1) * local)
        a, b = z_a[rows].clone().requires_grad_(), z_b[rows].clone().requires_grad_()
        memory = queue.valid()
        loss = nt_xent_with_memory(a, b, memory, 0.2)
        loss.backward()
        torch.save(
            {
                "keys": queue.valid().clone(),
                "ptr": queue.ptr,
                "filled": queue.filled,
                "loss": loss.detach(),
                "grad_a": a.grad,
                "grad_b": b.grad,
            },
            Path(out_dir) / f"{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_processes_enqueue_the_keys_of_every_rank(tmp_path: Path) -> None:
    world_size, batch = 2, 8
    gen = torch.Generator().manual_seed(3)
    z_a, z_b = torch.randn(batch, 2, generator=gen), torch.randn(batch, 2, generator=gen)
    mp.spawn(_worker, args=(world_size, _free_port(), z_a, z_b, str(tmp_path)), nprocs=world_size)
    results = [torch.load(tmp_path / f"{r}.pt") for r in range(world_size)]

    # Both ranks hold the same queue: [1,1,1,2,2,2] (rank 0's keys, then rank 1's) in rows 0-5, then
    # [10,10,10,20,20,20] in rows 6-9 and, wrapping around, rows 0-1.
    values = [20.0, 20.0, 1.0, 2.0, 2.0, 2.0, 10.0, 10.0, 10.0, 20.0]
    expected = torch.tensor(values)[:, None].repeat(1, 2)
    for result in results:
        assert torch.equal(result["keys"], expected)
        assert (result["ptr"], result["filled"]) == (2, 10)

    # 2 ranks x B/2 with the shared queue == 1 rank x B with the same queue (loss and gradient).
    a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    loss = nt_xent_with_memory(a, b, expected, 0.2)
    loss.backward()
    assert a.grad is not None and b.grad is not None
    assert torch.allclose(torch.stack([r["loss"] for r in results]).mean(), loss.detach(), atol=1e-6)
    assert torch.allclose(torch.cat([r["grad_a"] for r in results]) / world_size, a.grad, atol=1e-6)
    assert torch.allclose(torch.cat([r["grad_b"] for r in results]) / world_size, b.grad, atol=1e-6)
