"""Failures during training: a NaN/Inf loss or non-finite weights stop the run with the step, the LR, the last
good checkpoint and a hint, and never overwrite that checkpoint; out-of-memory names the batch size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from faultkit import RUNTIME, STAGE_CHECKPOINTS, TINY_PRETRAIN, FaultLog, error_line, sets

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.engine import classify, pretrain


def _finite(path: Path) -> bool:
    state = load_checkpoint(path)["model"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize(
    ("bad", "log_every"), [(math.nan, 1), (math.inf, 1), (math.nan, 20)], ids=["nan", "inf", "nan-unlogged"]
)
def test_a_non_finite_pretraining_loss_stops_with_step_lr_and_last_good_checkpoint(
    bad: float,
    log_every: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: FaultLog,
) -> None:
    """From step 3 the loss is NaN/Inf. With log_every_steps=20 the loss is not synced at step 3, but the
    checkpoint written after it is (it would overwrite the good one)."""
    real = pretrain.nt_xent
    calls = {"n": 0}

    def poisoned(za: torch.Tensor, zb: torch.Tensor, temperature: float) -> torch.Tensor:
        calls["n"] += 1
        loss = real(za, zb, temperature)
        return loss * bad if calls["n"] >= 3 else loss

    monkeypatch.setattr(pretrain, "nt_xent", poisoned)
    run = tmp_path / "run"
    argv = ["pretrain", *sets(*TINY_PRETRAIN, f"run_dir={run}", f"log_every_steps={log_every}")]
    assert main(argv) == 3
    err = error_line(capsys.readouterr().err, "pretrain")
    assert f"loss became {'non-finite' if log_every > 1 else bad} at step 3 (lr " in err, err
    assert f"last good checkpoint: {run / 'last.pt'}" in err and "optim.base_lr" in err and "fp32" in err
    assert load_checkpoint(run / "last.pt")["step"] == 2 and _finite(run / "last.pt")
    case = f"{bad} loss in pretraining" + (" between log syncs (log_every_steps=20)" if log_every > 1 else "")
    fault.record(RUNTIME, case, "stopped (exit 3): step, LR, last good checkpoint (intact, finite), hint")


def test_non_finite_weights_with_a_finite_loss_are_never_checkpointed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    real = pretrain.contrastive_step
    calls = {"n": 0}

    def corrupting(module: torch.nn.Module, *args: object, **kwargs: object) -> object:
        out = real(module, *args, **kwargs)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] == 3:  # e.g. an overflowing gradient that the loss did not show
            with torch.no_grad():
                module.model.head.layers[0].linear.weight[0, 0] = math.inf  # type: ignore[index, union-attr]
        return out

    monkeypatch.setattr(pretrain, "contrastive_step", corrupting)
    run = tmp_path / "run"
    assert main(["pretrain", *sets(*TINY_PRETRAIN, f"run_dir={run}")]) == 3
    err = error_line(capsys.readouterr().err, "pretrain")
    assert "weights became non-finite" in err and "model.head.layers.0.linear.weight" in err, err
    assert "at step 3" in err and load_checkpoint(run / "last.pt")["step"] == 2 and _finite(run / "last.pt")
    fault.record(
        RUNTIME,
        "Inf weight with a finite loss (pretraining)",
        "stopped (exit 3) before the checkpoint; names the tensor; last checkpoint intact",
    )


def _finetune(tiny_pipeline_run: Path, run: Path) -> list[str]:
    pretrained = tiny_pipeline_run / STAGE_CHECKPOINTS["pretrain"]
    settings = ["data.name=synthetic", "data.synthetic_size=32", "data.load_size=16", "batch_size=4"]
    settings += ["epochs=1", "precision=fp32", "device=cpu", "log_every_steps=1", "checkpoint_every_steps=1"]
    return [
        "finetune",
        "--pretrained",
        str(pretrained),
        "--labels",
        "100%",
        *sets(*settings, f"run_dir={run}"),
    ]


def test_a_nan_fine_tuning_loss_stops_with_the_same_facts(
    tiny_pipeline_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: FaultLog,
) -> None:
    real = classify.ClassifierTrainer.loss

    def poisoned(self: classify.ClassifierTrainer, images: torch.Tensor, labels: torch.Tensor, step: int):
        loss = real(self, images, labels, step)
        return loss * math.nan if step >= 2 else loss

    monkeypatch.setattr(classify.ClassifierTrainer, "loss", poisoned)
    run = tmp_path / "run"
    assert main(_finetune(tiny_pipeline_run, run)) == 3
    err = error_line(capsys.readouterr().err, "finetune")
    assert "finetune: loss became nan at step 3 (lr " in err and f"checkpoint: {run / 'last.pt'}" in err, err
    assert load_checkpoint(run / "last.pt")["step"] == 2 and _finite(run / "last.pt")
    fault.record(
        RUNTIME,
        "NaN loss in fine-tuning (the loop distillation shares)",
        "stopped (exit 3): step, LR, last good checkpoint (intact), hint",
    )


OOM_ERRORS = {
    "CUDA out-of-memory": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "CPU allocator failure": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 4294967296 bytes."
    ),
}


@pytest.mark.parametrize("kind", list(OOM_ERRORS))
def test_out_of_memory_names_the_batch_size_and_a_fix(
    kind: str,
    tiny_pipeline_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fault: FaultLog,
) -> None:
    calls = {"n": 0}
    real_step = pretrain.contrastive_step

    def hungry_step(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OOM_ERRORS[kind]()
        return real_step(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pretrain, "contrastive_step", hungry_step)
    run = tmp_path / "pre"
    assert main(["pretrain", *sets(*TINY_PRETRAIN, f"run_dir={run}")]) == 3
    err = error_line(capsys.readouterr().err, "pretrain")
    assert "out of memory on cpu at step 3 with batch_size 8 (8 per device)" in err, err
    assert "--set batch_size=4" in err and "precision=bf16" in err and f"{run / 'last.pt'}" in err
    assert load_checkpoint(run / "last.pt")["step"] == 2

    def hungry_loss(*args: object, **kwargs: object) -> torch.Tensor:
        raise OOM_ERRORS[kind]()

    monkeypatch.setattr(classify.ClassifierTrainer, "loss", hungry_loss)
    assert main(_finetune(tiny_pipeline_run, tmp_path / "ft")) == 3
    err = error_line(capsys.readouterr().err, "finetune")
    assert (
        "finetune: out of memory on cpu at step 1 with batch_size 4" in err and "last checkpoint: none" in err
    )
    fault.record(
        RUNTIME,
        f"{kind} in a training step (pretraining and fine-tuning)",
        "stopped (exit 3): batch size that failed, device, last checkpoint, what to try",
        2,
    )
