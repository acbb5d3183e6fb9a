"""The real launcher: ``torchrun --nproc_per_node 2 -m simclrv2 pipeline`` on CPU (gloo), every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from simclrv2.checkpoint import load_checkpoint

TINY = {
    "labels": ["25%"],
    "data": {"name": "synthetic", "synthetic_size": 128},
    "pretrain": {
        "model": {"backbone": "r18_0.125x_sk0"},
        "batch_size": 32,
        "epochs": 1,
        "precision": "fp32",
        "optim": {"warmup_epochs": 0},
    },
    "linear_eval": {"precision": "fp32"},
    "finetune": {"epochs": 1, "batch_size": 16, "precision": "fp32"},
    "distill": {"epochs": 1, "batch_size": 32, "precision": "fp32", "optim": {"warmup_epochs": 0}},
    "supervised": {"epochs": 1, "batch_size": 16, "precision": "fp32", "lr_grid": [1.0]},
}


def test_torchrun_two_processes_run_the_whole_pipeline(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "run_dir": str(tmp_path / "run")}))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "simclrv2", "pipeline", "--device", "cpu", "--config", str(config),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    rows = set(results["table"])
    assert {"Linear eval", "Fine-tuned (layer 1)", "Self-distilled", "Supervised (labels only)"} <= rows
    assert (run / "report.md").is_file()
    assert proc.stdout.count("report:") == 1  # rank 0 alone prints results
    assert (proc.stdout + proc.stderr).count("pipeline: pretrain: starting") == 1  # and status lines
    for ckpt in run.rglob("last.pt"):
        assert not any(k.startswith("module.") for k in load_checkpoint(ckpt)["model"]), ckpt
    assert not list(run.rglob("*.tmp"))


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_and_resumes(tmp_path: Path) -> None:
    """torchrun forwards SIGTERM to every rank; the ranks agree on the step to stop at (a rank stopping
    alone would leave the others blocked in a collective), rank 0 writes the checkpoint, every rank exits
    75, and ``--resume`` under torchrun finishes the run."""
    import signal
    import time

    run = tmp_path / "pre"
    sets = [
        "data.name=synthetic", "data.synthetic_size=256", "model.backbone=r18_0.125x_sk0", "batch_size=32",
        "epochs=50", "precision=fp32", "log_every_steps=1", "eval.knn_every_epochs=0",
        "optim.warmup_epochs=0", f"run_dir={run}",
    ]  # fmt: skip
    args = [arg for item in sets for arg in ("--set", item)]
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*base, "-m", "simclrv2", "pretrain", "--device", "cpu", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.count("interrupted") >= 2 or "exitcode  : 75" in err, err[-3000:]
    ckpt = load_checkpoint(run / "last.pt", stage="pretrain")
    assert 3 <= ckpt["step"] < 400
    resumed = subprocess.run(
        [*cmd, "--resume", "--set", f"max_steps={ckpt['step'] + 2}"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run / "last.pt", stage="pretrain")["step"] == ckpt["step"] + 2
