"""The command line: help, a tiny pretraining run, exact resume, errors before work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main

TINY = [
    "data.name=synthetic",
    "data.synthetic_size=96",
    "model.backbone=r18_0.25x_sk0",
    "batch_size=32",
    "epochs=2",
    "optim.warmup_epochs=0.5",
    "precision=fp32",
    "log_every_steps=1",
    "eval.batch_size=64",
    "eval.knn_k=20",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def test_help_runs_as_a_console_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "simclrv2", "pretrain", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--config" in out and "--resume" in out and "--set" in out


def test_two_step_pretraining_writes_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", *_sets(*TINY, f"run_dir={run}", "max_steps=2")]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 2 and results["total_steps"] == 6
    assert 0 <= results["knn"]["top1"] <= 100
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines if "loss" in r)
    ckpt = load_checkpoint(run / "last.pt", stage="pretrain")
    assert ckpt["step"] == 2 and ckpt["config"]["max_steps"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert (run / "config.yaml").is_file() and any((run / "tensorboard").iterdir())


def test_resume_reproduces_an_uninterrupted_run_exactly(tmp_path: Path) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["pretrain", *_sets(*TINY, f"run_dir={full}")]) == 0
    # Interrupted mid-epoch (step 2 of 3 in epoch 0), then resumed to the end.
    assert main(["pretrain", *_sets(*TINY, f"run_dir={cut}", "max_steps=2")]) == 0
    at_step_2 = load_checkpoint(cut / "last.pt")["model"]
    assert main(["pretrain", "--resume", *_sets(*TINY, f"run_dir={cut}")]) == 0
    a = load_checkpoint(full / "last.pt")
    b = load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # The resumed steps really trained (equality above is not two untouched models).
    key = "model.head.layers.0.linear.weight"
    assert not torch.equal(at_step_2[key], b["model"][key])


def test_existing_run_is_not_overwritten_and_bad_input_fails_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", *_sets(*TINY, f"run_dir={run}", "max_steps=1")]) == 0
    before = (run / "last.pt").read_bytes()
    assert main(["pretrain", *_sets(*TINY, f"run_dir={run}", "max_steps=1")]) == 2
    assert "already exists: pass --resume" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before

    assert main(["pretrain", *_sets(*TINY, f"run_dir={tmp_path / 'x'}", "optim.base_lr=-1")]) == 2
    assert "optim.base_lr must be > 0" in capsys.readouterr().err
    assert main(["pretrain", *_sets(*TINY, f"run_dir={tmp_path / 'y'}", "batch_size=4096")]) == 2
    err = capsys.readouterr().err
    assert "4096" in err and "96" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("finetune", ("--pretrained", "--labels", "--from-layer", "--resume")),
        ("linear-eval", ("--pretrained", "--labels")),
        ("knn", ("--pretrained", "--labels")),
        ("supervised", ("--labels", "--model", "--resume")),
        ("distill", ("--teacher", "--student", "--temperature", "--alpha", "--resume")),
        ("pipeline", ()),
    ],
)
def test_stage_two_commands_have_help(
    command: str, flags: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in (*flags, "--config", "--set"))
