"""Pretraining options: ``compile`` and ``model.grad_checkpoint`` (--grad-checkpoint) for speed and memory,
``keep_epochs``, fractional ``epochs``."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main

TINY = [
    "data.name=synthetic",
    "data.synthetic_size=64",
    "data.image_size=16",
    "model.backbone=r18_0.25x_sk0",
    "batch_size=16",
    "epochs=2",
    "optim.warmup_epochs=0.5",
    "log_every_steps=1",
    "eval.knn_k=10",
    "max_steps=2",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_grad_checkpoint_flag_trains_with_checkpointed_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simclrv2.models import resnet

    calls = []
    real = resnet.checkpoint
    monkeypatch.setattr(resnet, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    run = tmp_path / "run"
    assert main(["pretrain", "--grad-checkpoint", *_sets(*TINY, f"run_dir={run}")]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["grad_checkpoint"] is True
    assert len(calls) == 2 * 8  # 2 steps x the 8 residual blocks of a ResNet-18; evaluation never checkpoints


class _FakeCompiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule (same ``_orig_mod`` attribute), without compiling:
    compiling even the tiny model takes minutes on a 2-core CPU."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args: object) -> object:
        return self._orig_mod(*args)


def test_compile_wraps_the_training_module_and_checkpoints_stay_unwrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or _FakeCompiled(m))
    run = tmp_path / "run"
    assert main(["pretrain", *_sets(*TINY, f"run_dir={run}", "compile=true")]) == 0
    assert len(compiled) == 1
    keys = load_checkpoint(run / "last.pt", stage="pretrain")["model"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)


def test_keep_epochs_keeps_a_copy_of_those_epochs_checkpoints_with_knn(tmp_path: Path) -> None:
    run = tmp_path / "run"
    settings = [s for s in TINY if not s.startswith(("max_steps", "epochs"))]
    argv = ["pretrain", *_sets(*settings, "epochs=3", "keep_epochs=[1, 2]", "eval.knn_every_epochs=0")]
    assert main([*argv, "--set", f"run_dir={run}"]) == 0
    kept = sorted(p.name for p in run.glob("epoch*.pt"))
    assert kept == ["epoch0001.pt", "epoch0002.pt"]
    steps_per_epoch = load_checkpoint(run / "last.pt")["step"] // 3
    for epoch in (1, 2):
        ckpt = load_checkpoint(run / f"epoch{epoch:04d}.pt", stage="pretrain")
        assert ckpt["step"] == epoch * steps_per_epoch and ckpt["epoch"] == epoch
    # kNN ran at the kept epochs and at the end only (knn_every_epochs=0)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "knn_top1" in r] == [steps_per_epoch * e for e in (1, 2, 3)]
    # A kept epoch outside the run is refused before any work.
    assert (
        main(["pretrain", *_sets(*settings, "epochs=3", "keep_epochs=[4]", f"run_dir={tmp_path / 'x'}")]) == 2
    )


def test_auto_precision_is_fp32_when_onednn_is_capped_below_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ONEDNN_MAX_CPU_ISA=AVX2`` reproduces a CPU without AVX-512 (bf16 only emulated): ``auto`` picks fp32
    there, whatever the CPU itself reports."""
    from simclrv2.engine.runtime import cpu_has_fast_bf16, resolve_precision

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not cpu_has_fast_bf16()
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # asked for explicitly: kept


def test_fractional_epochs_end_the_schedule_mid_epoch_and_resume_exactly(tmp_path: Path) -> None:
    """``epochs=1.5`` on 64 images at batch 16 (4 steps per epoch): 6 steps, the cosine LR finished, kNN run
    on the final weights; killed after step 5 and resumed, the weights equal the uninterrupted run's."""
    settings = [s for s in TINY if not s.startswith(("max_steps", "epochs"))]
    base = [*settings, "epochs=1.5", "optim.warmup_epochs=0.25", "precision=fp32", "device=cpu"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["pretrain", *_sets(*base, f"run_dir={full}")]) == 0
    ckpt = load_checkpoint(full / "last.pt", stage="pretrain")
    assert ckpt["step"] == 6
    logged = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in logged if "lr" in r]
    # 1 warmup step, then a cosine over the 5 others: the 6th step's LR is peak * (1 + cos(4/5 pi)) / 2
    # (with the schedule of 2 epochs, 8 steps, it would be peak * (1 + cos(4/7 pi)) / 2: twice that)
    peak = lrs[1]
    cosine = [peak * (1 + math.cos(k / 5 * math.pi)) / 2 for k in (1, 2, 3, 4)]
    assert lrs == pytest.approx([0.0, peak, *cosine])
    assert any("knn_top1" in r for r in logged)
    assert main(["pretrain", *_sets(*base, f"run_dir={cut}", "max_steps=5")]) == 0
    assert load_checkpoint(cut / "last.pt", stage="pretrain")["step"] == 5
    assert main(["pretrain", "--resume", *_sets(*base, f"run_dir={cut}")]) == 0
    resumed = load_checkpoint(cut / "last.pt", stage="pretrain")
    assert resumed["step"] == 6
    for key, value in ckpt["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
