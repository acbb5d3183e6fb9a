"""Fault-injection suite helpers (imported by the tests; hooks and fixtures are registered in conftest.py).

The recorder behind ``docs/reliability.md``:

Every test takes the ``fault`` fixture and records each fault it injected or bad input it tried, with the
outcome it asserted (``fault.record(category, case, outcome, count=n)``). When ``SIMCLRV2_RELIABILITY_JSON``
names a file, the session writes every record there together with the test's real result (a test that
failed turns all its rows into FAILED, and a test that recorded nothing still gets a row), and
``tools/reliability_report.py`` renders the table from it. The table is therefore whatever this suite
measured, not text typed by hand.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPORT_ENV = "SIMCLRV2_RELIABILITY_JSON"

# Categories in table order.
KILLS = "Kills and preemption"
WRITES = "Checkpoint writes"
DATA = "Bad data"
CONFIG = "Bad config"
CHECKPOINTS = "Bad checkpoints"
RUNTIME = "Runtime failures"
SECURITY = "Security"
FUZZ = "Fuzzing"
CATEGORIES = (KILLS, WRITES, DATA, CONFIG, CHECKPOINTS, RUNTIME, SECURITY, FUZZ)


class FaultLog:
    """The cases one test injected, each with the outcome the test asserted."""

    def __init__(self) -> None:
        self.cases: list[dict[str, Any]] = []

    def record(self, category: str, case: str, outcome: str, count: int = 1) -> None:
        assert category in CATEGORIES, category
        self.cases.append({"category": category, "case": case, "outcome": outcome, "count": int(count)})


_LOGS: dict[str, FaultLog] = {}


@pytest.fixture
def fault(request: pytest.FixtureRequest) -> FaultLog:
    log = FaultLog()
    _LOGS[request.node.nodeid] = log
    return log


# --- forked workers ---------------------------------------------------------------------------------------
# A kill test starts many short runs. Forking the already-imported test process costs milliseconds, where a
# fresh interpreter pays seconds for `import torch`. Children run single-threaded (bitwise-reproducible
# float reductions, and no OpenMP pool inherited across fork).


def _child_main(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import torch

    torch.set_num_threads(1)
    try:
        fn(*args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def fork(fn: Callable[..., Any], *args: Any) -> multiprocessing.process.BaseProcess:
    """Start ``fn(*args)`` in a forked child (exit code 0 on success, 1 on an exception)."""
    process = multiprocessing.get_context("fork").Process(target=_child_main, args=(fn, args), daemon=True)
    process.start()
    return process


def run_forked(fn: Callable[..., Any], *args: Any, timeout: float = 120.0) -> int:
    process = fork(fn, *args)
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"{fn.__name__} did not finish in {timeout} s")
    return process.exitcode


def warm_imports() -> None:
    """Import once, before forking, what a run imports lazily: TensorBoard, and torch._dynamo (about 2 s,
    imported by the first optimiser built)."""
    import torch._dynamo
    import torch.utils.tensorboard  # noqa: F401

    import simclrv2.engine.distill
    import simclrv2.engine.finetune
    import simclrv2.engine.pipeline
    import simclrv2.engine.pretrain
    import simclrv2.report  # noqa: F401


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# A pipeline small enough to run in about two seconds on one thread: 32 synthetic 16-px images, r18 at
# 1/8 width; checkpoints every step so that kills land between, and inside, checkpoint writes.
TINY_PIPELINE = [
    "labels=[50%]",
    "label_seeds=[0]",
    "finetune_layers=[1]",
    "run_linear_eval=false",
    "run_supervised=false",
    "data.name=synthetic",
    "data.synthetic_size=32",
    "data.load_size=16",
    "pretrain.epochs=2",
    "pretrain.batch_size=8",
    "pretrain.model.backbone=r18_0.125x_sk0",
    "pretrain.optim.warmup_epochs=0.5",
    "pretrain.eval.knn_k=5",
    "pretrain.checkpoint_every_steps=1",
    "pretrain.log_every_steps=1",
    "pretrain.precision=fp32",
    "pretrain.device=cpu",
    "finetune.epochs=3",
    "finetune.batch_size=4",
    "finetune.log_every_steps=1",
    "finetune.checkpoint_every_steps=1",
    "finetune.precision=fp32",
    "finetune.device=cpu",
    "distill.epochs=2",
    "distill.batch_size=8",
    "distill.optim.warmup_epochs=0.5",
    "distill.log_every_steps=1",
    "distill.checkpoint_every_steps=1",
    "distill.precision=fp32",
    "distill.device=cpu",
]

# One pretraining run of a few steps (also on 16-px synthetic images), for CLI-level tests.
TINY_PRETRAIN = [
    "data.name=synthetic",
    "data.synthetic_size=32",
    "data.load_size=16",
    "model.backbone=r18_0.125x_sk0",
    "batch_size=8",
    "epochs=2",
    "optim.warmup_epochs=0.5",
    "precision=fp32",
    "device=cpu",
    "log_every_steps=1",
    "checkpoint_every_steps=1",
    "eval.knn_k=5",
]


def run_tiny_pipeline(root: Path) -> None:
    """Run (or resume) :data:`TINY_PIPELINE` in ``root``, without the report's figures (seconds of matplotlib
    that no fault test looks at)."""
    from simclrv2.config import PipelineConfig, load_config
    from simclrv2.engine import pipeline

    pipeline.write_pipeline_report = lambda root, *_: root / "report.md"  # type: ignore[assignment]
    pipeline.Pipeline(load_config(PipelineConfig, None, [*TINY_PIPELINE, f"run_dir={root}"]), False).run()


@pytest.fixture(scope="session")
def tiny_pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted tiny pipeline (in a forked single-threaded child, like the kill runs): the reference
    for the kill tests and a source of pretrain/finetune/distill checkpoints for the others."""
    warm_imports()
    root = tmp_path_factory.mktemp("reference") / "pipeline"

    assert run_forked(run_tiny_pipeline, root) == 0
    return root


STAGE_CHECKPOINTS = {
    "pretrain": Path("pretrain/last.pt"),
    "finetune": Path("finetune/50pct/layer1/seed0/last.pt"),
    "distill": Path("distill/50pct/self/seed0/last.pt"),
}


def error_line(stderr: str, command: str) -> str:
    """The CLI's one error line (``simclrv2 COMMAND: ...``) out of stderr, where progress bars also write
    (with carriage returns); fails unless there is exactly one and no traceback."""
    marker = f"simclrv2 {command}: "
    lines = [line[line.index(marker) :] for line in stderr.replace("\r", "\n").splitlines() if marker in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]
