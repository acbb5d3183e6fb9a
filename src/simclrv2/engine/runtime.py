"""What every stage needs around the model: device, precision, seeding, metrics, the progress bar."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from simclrv2 import distributed


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA GPU is visible; use --set device=cpu")
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK at init
    return device


def device_type(name: str) -> str:
    """``cpu`` or ``cuda`` for a device setting, without touching the GPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where oneDNN runs bf16 convolutions faster than fp32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA with bf16 support and on CPUs with AMX/AVX512-BF16, else fp32."""
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("precision=bf16 is not supported by this GPU; use --set precision=fp32")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The single mixed-precision switch (STYLE.md lesson 10). bf16 needs no loss scaling."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def step_generator(device: torch.device, seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A generator seeded from (seed, step, rank): augmentation is a pure function of the step,
    so resuming mid-run reproduces an uninterrupted run exactly, and ranks never repeat each other."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return gen


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that updates at most every 30 s when stderr is not a terminal (a log file or CI), so a
    long run does not write a line per step; shown on the main process only."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 30.0)
    kwargs["disable"] = kwargs.get("disable", False) or not distributed.is_main_process()
    return tqdm(iterable, **kwargs)


def echo(message: str) -> None:
    """Print a status line (through tqdm, so progress bars stay intact) on the main process only."""
    if distributed.is_main_process():
        tqdm.write(message)


def write_json(path: str | Path, payload: Any, indent: int | None = 2) -> None:
    """Write ``payload`` as JSON on the main process only, atomically (temp file + rename), so a reader never
    sees half a file and N ranks never write the same file."""
    if not distributed.is_main_process():
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=indent))
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


class MetricsLogger:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars; only the main process writes."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.enabled = distributed.is_main_process()
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but keep training if it is broken
                self.writer = None

    def log(self, step: int, **metrics: float | int | str) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode and restore its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
