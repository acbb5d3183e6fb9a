"""SIGTERM / SIGINT: the current step finishes, a checkpoint is written, the command exits with code 75
("interrupted, resumable") and says how to resume; a second signal stops at once (128 + signal number) and
leaves the last checkpoint intact. The resumed run matches an uninterrupted one exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faultkit import KILLS, TINY_PRETRAIN, FaultLog, fork, run_forked, sets, warm_imports

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.engine.runtime import EXIT_INTERRUPTED

# A longer run of the same tiny model: 256 images, 32 steps per epoch, checkpoints at epoch ends only, so
# that the checkpoint at the interrupted step is the signal handler's own.
LONG_PRETRAIN = [*TINY_PRETRAIN, "data.synthetic_size=256", "epochs=4", "checkpoint_every_steps=0"]
LONG_PRETRAIN += ["eval.knn_every_epochs=0"]


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"loss"' in line for line in path.read_text().splitlines())


def _wait_for_training(run_dir: Path, is_alive: object, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while _logged_steps(run_dir) < 1:
        assert time.time() < deadline, "training did not start"
        assert callable(is_alive) and is_alive(), "the run exited before training"
        time.sleep(0.01)


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _pretrain_cli(run_dir: Path, extra: tuple[str, ...] = (), resume: bool = False) -> None:
    flags = ["--resume"] if resume else []
    os._exit(main(["pretrain", *sets(*LONG_PRETRAIN, f"run_dir={run_dir}", *extra), *flags]))


def test_sigterm_in_a_real_process_checkpoints_the_step_and_exits_resumable(
    tmp_path: Path, fault: FaultLog
) -> None:
    """The console command itself (a fresh interpreter) under SIGTERM, then --resume to a later step: the same
    weights as a run that was never interrupted."""
    warm_imports()
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # single-threaded like the forked comparison runs below
    cmd = [sys.executable, "-m", "simclrv2", "pretrain", *sets(*LONG_PRETRAIN, f"run_dir={run}")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_training(run, lambda: proc.poll() is None)
    time.sleep(random.Random(1).uniform(0.0, 0.05))
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "SIGTERM received: finishing the current step" in err
    marker = "simclrv2 pretrain: interrupted:"  # (after the progress bar's carriage returns)
    last = [line[line.index(marker) :] for line in err.splitlines() if marker in line]
    assert len(last) == 1 and "--resume" in last[0] and "Traceback" not in err
    ckpt = load_checkpoint(run / "last.pt", stage="pretrain")
    step = int(ckpt["step"])
    assert f"after step {step} of 128" in last[0]
    # the signal lands at a random step: it must have stopped the run before its end (128 steps), after the
    # step in flight finished and was saved; exactness is checked by the resume comparison below
    assert 1 <= step < 128 and _logged_steps(run) >= step
    assert not (run / "results.json").exists()

    # Resume to a few steps later and compare with an uninterrupted run to the same step.
    ref = tmp_path / "ref"
    assert run_forked(_pretrain_cli, run, (f"max_steps={step + 3}",), True) == 0
    assert run_forked(_pretrain_cli, ref, (f"max_steps={step + 3}",)) == 0
    assert load_checkpoint(run / "last.pt")["step"] == step + 3
    assert _same_weights(run / "last.pt", ref / "last.pt")
    fault.record(
        KILLS,
        "SIGTERM to `simclrv2 pretrain` (real process)",
        "survived: step finished, checkpoint written, exit 75 with a resume hint; resume bit-identical",
    )


def _finetune_cli(pretrained: Path, run_dir: Path, extra: tuple[str, ...] = (), resume: bool = False) -> None:
    args = ["finetune", "--pretrained", str(pretrained), "--labels", "100%"]
    settings = ["data.name=synthetic", "data.synthetic_size=32", "data.load_size=16", "batch_size=4"]
    settings += ["epochs=10", "precision=fp32", "device=cpu", "log_every_steps=1", *extra]
    os._exit(main([*args, *sets(*settings, f"run_dir={run_dir}"), *(["--resume"] * resume)]))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_finetuning_stops_after_the_step_and_resumes_exactly(
    tiny_pipeline_run: Path, tmp_path: Path, fault: FaultLog, signum: int
) -> None:
    pretrained = tiny_pipeline_run / "pretrain" / "last.pt"
    run, ref = tmp_path / "run", tmp_path / "ref"
    process = fork(_finetune_cli, pretrained, run)
    _wait_for_training(run, process.is_alive)
    assert process.pid is not None
    os.kill(process.pid, signum)
    process.join(60)
    assert process.exitcode == EXIT_INTERRUPTED
    step = int(load_checkpoint(run / "last.pt", stage="finetune")["step"])
    assert 1 <= step < 80  # stopped mid-run (80 steps in all); the resume comparison below checks exactness
    assert run_forked(_finetune_cli, pretrained, run, (f"max_steps={step + 3}",), True) == 0
    assert run_forked(_finetune_cli, pretrained, ref, (f"max_steps={step + 3}",)) == 0
    assert _same_weights(run / "last.pt", ref / "last.pt")
    name = signal.Signals(signum).name
    fault.record(
        KILLS,
        f"{name} during fine-tuning (mid-epoch)",
        "survived: step finished, checkpoint written, exit 75; resume bit-identical",
    )


def _slow_pretrain_cli(run_dir: Path) -> None:
    """Pretraining whose steps take 1 s, so that a second signal arrives while the first is honoured."""
    from simclrv2.engine import pretrain

    step = pretrain.contrastive_step

    def slow_step(*args: object, **kwargs: object) -> object:
        time.sleep(1.0)
        return step(*args, **kwargs)  # type: ignore[arg-type]

    pretrain.contrastive_step = slow_step  # type: ignore[assignment]
    _pretrain_cli(run_dir, ("checkpoint_every_steps=1",))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(
    tmp_path: Path, fault: FaultLog, signum: int
) -> None:
    warm_imports()
    run = tmp_path / "run"
    process = fork(_slow_pretrain_cli, run)
    _wait_for_training(run, process.is_alive)
    deadline = time.time() + 30
    while not (run / "last.pt").exists():  # step 1's checkpoint is written: step 2 (1 s) has begun
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.1)  # inside the next (slow) step
    assert process.pid is not None
    steps_before = _logged_steps(run)
    os.kill(process.pid, signum)
    time.sleep(0.05)
    t0 = time.time()
    os.kill(process.pid, signum)
    process.join(30)
    stopped_in = time.time() - t0
    assert process.exitcode == 128 + signum
    assert stopped_in < 0.6, f"took {stopped_in:.2f} s: the step in flight was not cut short"
    assert _logged_steps(run) == steps_before  # the step in flight did not finish
    ckpt = load_checkpoint(run / "last.pt", stage="pretrain")  # the last checkpoint is intact
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ckpt["step"] == max(r["step"] for r in logged if "loss" in r)  # no step after it was saved
    assert not list(run.glob(".last.pt.*.tmp"))
    name = signal.Signals(signum).name
    fault.record(
        KILLS,
        f"second {name} while the first is being honoured",
        f"survived: stopped at once (exit {128 + signum}), last checkpoint intact",
    )
