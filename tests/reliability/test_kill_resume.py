"""SIGKILL at random moments of pretraining, fine-tuning and distillation, then rerunning the pipeline: the
run finishes with weights (and optimiser state) bit-identical to an uninterrupted run.

A tiny pipeline runs in forked single-threaded children (CPU, fp32; exact resume is a property of the code:
data order and augmentation are functions of the step, and every checkpoint holds the RNG state). The parent
waits until a child has logged a randomly chosen step of a stage, sleeps a random fraction of a step (so the
kill lands anywhere: in the forward/backward pass, in a checkpoint write, in an evaluation) and SIGKILLs it,
then starts the next child on the same run directory, which resumes each unfinished stage from its
``last.pt``. The kill points come from a seeded RNG (``SIMCLRV2_KILL_SEED``), so a failure is reproducible.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from faultkit import KILLS, STAGE_CHECKPOINTS, WRITES, FaultLog, fork, run_tiny_pipeline, warm_imports

from simclrv2.checkpoint import load_checkpoint
from simclrv2.engine.runtime import MetricsLogger

STAGES = ("pretrain", "finetune", "distill")
KILLS_PER_STAGE = 5
TARGETS_PER_STAGE = 6  # one spare: a kill meant for a stage's last step can land in the next stage
SEED = int(os.environ.get("SIMCLRV2_KILL_SEED", "7"))


def _pipeline_child(root: Path, conn: Connection) -> None:
    """Run (or resume) the tiny pipeline, sending (stage run_dir, step, time) after every logged step."""
    log = MetricsLogger.log

    def reporting_log(self: MetricsLogger, step: int, **metrics: float | int | str) -> None:
        log(self, step, **metrics)
        if "loss" in metrics:
            conn.send((str(self.path.parent), step))

    MetricsLogger.log = reporting_log  # type: ignore[method-assign]  # this child only
    run_tiny_pipeline(root)


def _start(root: Path) -> tuple[multiprocessing.process.BaseProcess, Connection]:
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    process = fork(_pipeline_child, root, sender)
    sender.close()  # the child holds the other end; EOF here once it exits
    return process, receiver


def _stale_temp_files(root: Path) -> set[Path]:
    return set(root.rglob(".last.pt.*.tmp"))


def _check_checkpoints_loadable(root: Path) -> None:
    for stage, rel in STAGE_CHECKPOINTS.items():
        if (root / rel).exists():
            load_checkpoint(root / rel, stage=stage)  # raises on a corrupt or half-written file


def test_sigkill_at_random_moments_then_rerun_gives_identical_weights(
    tiny_pipeline_run: Path, tmp_path: Path, fault: FaultLog
) -> None:
    warm_imports()
    rng = random.Random(SEED)
    root = tmp_path / "killed"
    totals = {s: int(load_checkpoint(tiny_pipeline_run / STAGE_CHECKPOINTS[s])["step"]) for s in STAGES}
    plan = [
        (STAGES.index(stage), step)
        for stage in STAGES
        for step in sorted(rng.sample(range(1, totals[stage] + 1), TARGETS_PER_STAGE))
    ]
    step_seconds = dict.fromkeys(STAGES, 0.05)  # updated from the children's reports
    kills = dict.fromkeys(STAGES, 0)
    in_write = 0

    # One kill during start-up, before the first step (building the data and the model).
    process, conn = _start(root)
    time.sleep(rng.uniform(0.0, 0.2))
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    conn.close()
    startup_killed = process.exitcode == -signal.SIGKILL

    for target in plan:
        before = _stale_temp_files(root)
        process, conn = _start(root)
        reached, last_time = None, None
        deadline = time.time() + 60
        while reached is None and time.time() < deadline:
            if not conn.poll(0.02):
                if not process.is_alive():
                    break
                continue
            try:
                run_dir, step = conn.recv()
            except EOFError:
                break
            stage = Path(run_dir).relative_to(root).parts[0]
            now = time.time()
            if last_time is not None and now - last_time < 1.0:
                step_seconds[stage] = now - last_time
            last_time = now
            if (STAGES.index(stage), step) >= target:
                reached = stage
        assert reached is not None, f"the run ended (exit {process.exitcode}) before kill point {target}"
        time.sleep(rng.uniform(0.0, step_seconds[reached]))  # anywhere in the next step or checkpoint write
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        conn.close()
        assert process.exitcode == -signal.SIGKILL, f"kill point {target}: the run was not killed"
        kills[reached] += 1
        in_write += bool(_stale_temp_files(root) - before)  # a temp checkpoint left: killed mid-write
        _check_checkpoints_loadable(root)  # the latest checkpoint of every stage is never corrupt

    # The last rerun is left to finish.
    process, conn = _start(root)
    process.join(120)
    conn.close()
    assert process.exitcode == 0, "the resumed pipeline did not finish"
    assert all(n >= KILLS_PER_STAGE for n in kills.values()), kills
    for stage in STAGES:
        a = load_checkpoint(tiny_pipeline_run / STAGE_CHECKPOINTS[stage], stage=stage)
        b = load_checkpoint(root / STAGE_CHECKPOINTS[stage], stage=stage)
        assert a["step"] == b["step"] == totals[stage]
        for key, value in a["model"].items():
            assert torch.equal(value, b["model"][key]), f"{stage}: {key} differs from the uninterrupted run"
        for index, state in a["optimizer"]["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b["optimizer"]["state"][index][name]), f"{stage}: optimizer {name}"
    assert (root / "results.json").is_file()

    survived = "survived: resumed, final weights and optimiser state bit-identical to an uninterrupted run"
    for stage in STAGES:
        fault.record(KILLS, f"SIGKILL at a random moment of {stage}, then rerun", survived, kills[stage])
    fault.record(
        KILLS,
        "SIGKILL during start-up (before the first step), then rerun",
        survived if startup_killed else "not killed (started too fast)",
    )
    fault.record(
        WRITES,
        "SIGKILL landed inside a checkpoint write (among the random kills above)",
        "survived: the previous checkpoint stayed loadable and the resumed run matched",
        in_write,
    )
