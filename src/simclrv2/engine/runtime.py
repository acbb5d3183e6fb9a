"""What every stage needs around the model: device, precision, seeding, metrics, the progress bar."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from simclrv2 import distributed
from simclrv2.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA GPU is visible; use --set device=cpu")
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", torch.cuda.current_device())  # set from LOCAL_RANK at init
    return device


def device_type(name: str) -> str:
    """``cpu`` or ``cuda`` for a device setting, without touching the GPU."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: bf16 is emulated there, slower than fp32.
_ONEDNN_ISAS_WITHOUT_BF16 = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where oneDNN runs bf16 convolutions faster than fp32, unless
    oneDNN or ATen is capped below AVX-512 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``: how a
    machine without AVX-512 is reproduced on one with it, see tests/models/test_avx2_kernels.py)."""
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    if not torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512"):
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA with bf16 support and on CPUs with AMX/AVX512-BF16, else fp32."""
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision=bf16 is not supported by this GPU; use --set precision=fp32")
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
    from simclrv2.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=indent))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def _tensorboard_without_tensorflow() -> None:
    """Make TensorBoard's writer use its own TF stub even where TensorFlow is installed (the test tools
    install it): otherwise ``torch.utils.tensorboard`` imports all of TensorFlow, 3-15 s per process, for
    scalars that need none of it. TensorBoard takes the stub whenever ``tensorboard.compat.notf`` imports
    (its ``//tensorboard/compat:no_tensorflow`` build switch); registering an empty module under that name
    is the switch. Only done when TensorFlow is not loaded already (then the writer may as well use it)."""
    if "tensorflow" not in sys.modules and "tensorboard.compat.notf" not in sys.modules:
        sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")


class MetricsLogger:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars; only the main process writes."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.enabled = distributed.is_main_process()
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if self.enabled and tensorboard:
            try:
                _tensorboard_without_tensorflow()
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


# --- interruption, out-of-memory, non-finite state ----------------------------------------------------------

EXIT_INTERRUPTED = 75
"""Exit code of a run stopped by SIGTERM/SIGINT after writing a checkpoint: "interrupted, resumable"
(EX_TEMPFAIL from sysexits.h: a temporary failure, try again). Rerun the command with --resume, or the
pipeline command as it was."""


class TrainingInterrupted(Exception):
    """A run stopped on SIGTERM/SIGINT after finishing its step and writing a checkpoint; resumable.

    Not a KeyboardInterrupt subclass, so that nothing that swallows KeyboardInterrupt can hide it.
    """

    def __init__(self, stage: str, signal_name: str, step: int, total_steps: int, checkpoint: Path) -> None:
        self.stage, self.signal_name, self.step, self.checkpoint = stage, signal_name, step, checkpoint
        super().__init__(
            f"{stage} stopped by {signal_name} after step {step} of {total_steps}; checkpoint written to "
            f"{checkpoint}. Resume: run the same command again with --resume (the pipeline: the same "
            "command as it was)."
        )


class ForcedStop(KeyboardInterrupt):
    """A second SIGTERM/SIGINT while the first was being honoured: stop at once. The last checkpoint
    written (atomically) is intact, so the run still resumes from it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"second {signal.Signals(signum).name}: stopped at once")


class GracefulInterrupt:
    """SIGTERM and SIGINT handlers for a training loop (a context manager, or ``install``/``restore``).

    The first signal only sets :attr:`signal_name`; the loop calls :meth:`stop_if_requested` after every
    step, which writes a checkpoint and raises :class:`TrainingInterrupted` (exit code
    :data:`EXIT_INTERRUPTED` at the CLI). A second signal raises :class:`ForcedStop` wherever the main thread
    is: checkpoint writes are atomic (temp file + rename), so stopping at once never corrupts the last one.
    Python runs signal handlers between bytecodes, so a long kernel finishes before either takes effect.
    Outside the main thread (signal handlers cannot be installed there) this is a no-op.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> GracefulInterrupt:
        self.signal_name = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> GracefulInterrupt:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal_name is not None:
            self.restore()  # a third signal gets the default behaviour
            raise ForcedStop(signum)
        self.signal_name = signal.Signals(signum).name
        print(
            f"simclrv2: {self.signal_name} received: finishing the current step and writing a checkpoint "
            "(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def stop_if_requested(
        self,
        stage: str,
        step: int,
        total_steps: int,
        save: Callable[[int], None],
        checkpoint: Path,
        device: torch.device | None = None,
        sync_now: bool = True,
    ) -> None:
        """After a step: if a signal came, checkpoint ``step`` with ``save`` and raise TrainingInterrupted.

        Under torchrun every rank gets the signal (torchrun forwards it), but not necessarily between the
        same two steps, and a rank that stops alone leaves the others waiting in a collective. So with more
        than one process the ranks agree first (an all-reduce of the flag on ``device``) and stop at the same
        step. The caller passes ``sync_now`` to do that only at its logging steps on GPUs (the agreement
        reads a value on the host, which would stall the asynchronous CUDA stream every step); on CPUs it
        costs nothing and runs every step.
        """
        if distributed.get_world_size() > 1:
            if not sync_now:
                return
            flag = torch.tensor([0.0 if self.signal_name is None else 1.0], device=device)
            if not bool(distributed.reduce_mean(flag) > 0):
                return
            self.signal_name = self.signal_name or "a signal to another rank"
        elif self.signal_name is None:
            return
        save(step)
        raise TrainingInterrupted(stage, self.signal_name, step, total_steps, checkpoint)


class TrainingOutOfMemory(RuntimeError):
    """The device ran out of memory in a training step; the message gives the batch size and what to try."""


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if isinstance(err, oom_type):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


@contextlib.contextmanager
def explain_out_of_memory(
    stage: str, step: int, batch_size: int, device: torch.device, checkpoint: Path
) -> Iterator[None]:
    """Turn an out-of-memory error in a training step into :class:`TrainingOutOfMemory` naming the batch size
    that failed, the device, the last checkpoint and the fixes (other errors pass through unchanged).
    ``step`` is the 0-based index of the step; messages count steps from 1, as the NaN stop does."""
    try:
        yield
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        per_device = batch_size // max(distributed.get_world_size(), 1)
        raise TrainingOutOfMemory(
            f"{stage}: out of memory on {device} at step {step + 1} with batch_size {batch_size} "
            f"({per_device} per device): {first_line}. Try --set batch_size={max(batch_size // 2, 1)} "
            "(or more devices), precision=bf16, or a smaller model; last checkpoint: "
            f"{checkpoint if checkpoint.exists() else 'none'} (resume from it with --resume)."
        ) from None


def nonfinite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers holding NaN or Inf (checked before a checkpoint is written, so
    that "the last good checkpoint" is good)."""
    state = module.state_dict()
    return [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def nonfinite_error(stage: str, what: str, step: int, lr: float, checkpoint: Path) -> FloatingPointError:
    """The NaN/Inf stop: the step, the LR, the last good checkpoint and what to try."""
    return FloatingPointError(
        f"{stage}: {what} at step {step} (lr {lr:.4g}); last good checkpoint: "
        f"{checkpoint if checkpoint.exists() else 'none'}. Try a lower optim.base_lr or precision=fp32."
    )
