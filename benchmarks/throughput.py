"""Pretraining throughput: our fast path against the typical PyTorch SimCLR recipe, side by side (issue 5).

Each training path runs in its own worker process (so that its peak memory is its own); the orchestrator
alternates the paths, a few steps at a time, for several repetitions and reports medians and their ratio
(the machine is shared, so absolute numbers drift; the ratio of medians of interleaved repetitions does
not). A step is everything a training step costs: augmentation (two views), forward, backward and the
optimiser step; images/s counts an image once for its two views.

* **reference** (:mod:`benchmarks.reference`): per-image torchvision transforms on PIL images in DataLoader
  worker processes, fp32, NCHW, a plain loop with a per-parameter LARS.
* **ours**: the project's default pretraining path, assembled from the package as ``simclrv2 pretrain``
  assembles it (``prepare`` -> ``PretrainModule`` -> ``build_optimizer`` -> ``_Trainer.train_step``: batched
  on-device augmentation, bf16 autocast where the CPU/GPU runs it fast, channels-last, foreach LARS).

Modes (``python benchmarks/throughput.py MODE --help``; every mode writes JSON under benchmarks/results/):

  compare     reference vs ours (images/s, peak memory, FLOP/s as a fraction of the measured peak)
  levers      ours with one lever switched at a time (bf16, channels-last, batched augmentation, data in
              memory, foreach LARS, no per-step sync, torch.compile) + the fp32 loss's cost
  sweep       ours against batch size or width
  checkpoint  ours with and without activation checkpointing (ResNet-50, 224 px by default)
  stages      fine-tune, distillation and linear-eval steps (images/s), kNN evaluation time
  knn         the same short pretraining with both paths, then kNN accuracy of each
  profile     where one step's time goes in each path (torch.profiler, ops grouped by kind)
  table       print every result file as Markdown tables
  readme      regenerate the tables in benchmarks/README.md from the JSON files

``--smoke`` runs any mode at tiny sizes in seconds (CI: tests/benchmarks/test_benchmark_smoke.py).
``--threads 1`` gives each path one thread: on a shared CPU the ratio stays meaningful (README).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.reference import LoopLARS, make_reference_loader, reference_step
from simclrv2.config import (
    AugmentSettings,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
)
from simclrv2.data import BatchLoader, ImageData
from simclrv2.engine.pretrain import (
    PretrainModule,
    _Trainer,
    build_optimizer,
    build_simclr_model,
    contrastive_step,
    prepare,
)
from simclrv2.engine.runtime import cpu_has_fast_bf16, seed_everything
from simclrv2.losses import nt_xent
from simclrv2.optim import param_groups, set_learning_rate, warmup_cosine

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
README = BENCH_DIR / "README.md"


# --- what one path is ---------------------------------------------------------------------------------


@dataclass
class PathSpec:
    """One training path. Defaults: ours, as ``configs/fashion_mnist.yaml`` pretrains, CIFAR-shaped data."""

    label: str = "ours"
    kind: str = "ours"  # ours | reference
    backbone: str = "r18_1x_sk0"
    data: str = "synthetic"  # synthetic (RGB, CIFAR-shaped, in memory) | fashion-mnist
    data_size: int = 4096  # synthetic training images
    image_size: int = 32  # synthetic image side
    crop: int | None = None  # training crop side; None = the images' side
    batch: int = 256
    precision: str = "auto"  # ours: auto = bf16 where fast
    channels_last: bool = True
    compile: bool = False
    grad_checkpoint: bool = False
    optimizer: str = "lars"  # lars (ours: foreach) | loop-lars (per-parameter loop) | sgd
    augment: str = "device"  # device: batched, on the device | workers: per-image PIL in DataLoader workers
    data_loader: str = "memory"  # memory: uint8 tensor on the device | workers: uint8 through DataLoader
    sync_every_step: bool = False  # read the loss back (.item()) after every step
    num_workers: int = 2
    threads: int | None = None  # torch.set_num_threads in the worker; None = torch's default
    device: str = "cpu"
    seed: int = 0
    warmup_steps: int = 1
    epochs: int = 100  # the LR schedule's length (irrelevant for speed; used by the knn mode)
    warmup_epochs: float = 10.0
    base_lr: float = 0.075
    temperature: float = 0.5
    color_strength: float = 0.5

    def replace(self, **changes: Any) -> PathSpec:
        return dataclasses.replace(self, **changes)


def pretrain_config(spec: PathSpec, run_dir: str) -> PretrainConfig:
    """The ``PretrainConfig`` of a path (the reference reads the same data, model and schedule from it)."""
    config = PretrainConfig(
        run_dir=run_dir,
        seed=spec.seed,
        epochs=spec.epochs,
        batch_size=spec.batch,
        temperature=spec.temperature,
        device=spec.device,
        precision=spec.precision if spec.kind == "ours" else "fp32",
        channels_last=spec.channels_last,
        compile=spec.compile,
        data=DataConfig(
            name=spec.data,
            synthetic_size=spec.data_size if spec.data == "synthetic" else None,
            load_size=spec.image_size if spec.data == "synthetic" else None,
            image_size=spec.crop,
            num_workers=spec.num_workers,
        ),
        model=ModelConfig(backbone=spec.backbone, grad_checkpoint=spec.grad_checkpoint),
        augment=AugmentSettings(color_strength=spec.color_strength),
        optim=OptimConfig(
            optimizer="sgd" if spec.optimizer == "sgd" else "lars",
            base_lr=spec.base_lr,
            warmup_epochs=spec.warmup_epochs,
        ),
        eval=EvalConfig(online_probe=False),  # the reference has no probe; it costs ~nothing anyway
    )
    config.validate()
    return config


# --- process memory ---------------------------------------------------------------------------------------


def _status_kb(pid: int | str, key: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _child_pids() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _children_cpu_seconds() -> float:
    """CPU time (user + system) of the live child processes (the DataLoader workers)."""
    total = 0.0
    for pid in _child_pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map, and zero, on first touch)."""
    try:
        return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])
    except (OSError, ValueError, IndexError):
        return 0


def rss_mb() -> float | None:
    kb = _status_kb("self", "VmRSS")
    return None if kb is None else kb / 1024


def memory_stats(device: torch.device) -> dict[str, Any]:
    """Peak resident memory (VmHWM) of this process and of its children (DataLoader workers: forked, so
    their sum double-counts shared pages), and the CUDA allocator's peak on a GPU."""
    out: dict[str, Any] = {}
    hwm = _status_kb("self", "VmHWM")
    if hwm is None:  # not Linux: ru_maxrss (kB on Linux, bytes on macOS)
        import resource

        hwm = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    out["rss_peak_mb"] = hwm / 1024
    children = _child_pids()
    out["workers"] = len(children)
    out["workers_rss_peak_mb"] = sum((_status_kb(p, "VmHWM") or 0.0) for p in children) / 1024
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


# --- FLOPs and the machine's peak -----------------------------------------------------------------------


def step_flops(
    config: PretrainConfig, small_images: bool, spec: PathSpec, crop: int, device: torch.device
) -> int:
    """Matmul/conv FLOPs of one training step (forward + backward of both views, and the loss), as
    ``FlopCounterMode`` counts them (BatchNorm, activations and the optimiser are not counted).

    The model is counted on the ``meta`` device (shapes only: no memory, no time); activation
    checkpointing's recomputation is not counted (useful FLOPs, as in "MFU").
    """
    with torch.device("meta"):
        m = build_simclr_model(config, small_images)
    m.backbone.grad_checkpoint = False
    x = torch.empty(2 * spec.batch, 3, crop, crop, device="meta")
    with FlopCounterMode(display=False) as counter:
        z = m(x)[-1]
        z.sum().backward()
    model_flops = counter.get_total_flops()
    z_full = torch.randn(2 * spec.batch, z.shape[1], device=device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        nt_xent(z_full[: spec.batch], z_full[spec.batch :], spec.temperature).backward()
    return int(model_flops + counter.get_total_flops())


def _best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def measure_peak(device: torch.device, smoke: bool = False) -> dict[str, Any]:
    """The machine's peak FLOP/s per dtype, *measured*: the best of a large matmul and a large 1x1
    convolution (channels-last). On x86 CPUs torch's fp32 matmul goes to MKL (which runs AVX2 code on AMD
    CPUs) and bf16 matmuls and all convolutions to oneDNN (AVX-512/AMX), so the convolution is the honest
    fp32 peak there. Measured peaks are below the datasheet's (clock, memory) but attainable by our ops."""
    n = 256 if smoke else (8192 if device.type == "cuda" else 2048)
    batch, channels, side = (
        (2, 64, 8) if smoke else ((256, 1024, 32) if device.type == "cuda" else (64, 512, 32))
    )
    repeats = 1 if smoke else 5
    out: dict[str, Any] = {
        "method": f"best of a {n}x{n} matmul and a 1x1 conv ({batch}x{channels}x{side}x{side}, "
        f"channels-last), best of {repeats} runs",
    }
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
            # Without AVX512-BF16/AMX (or with oneDNN capped below them) bf16 is only emulated: timing its
            # large matmul took over 10 minutes on a 2-core AVX2 VM, and no path of ours runs bf16 there.
            out["bf16"] = None
            out["bf16_skipped"] = "not measured: this CPU only emulates bf16 (no AVX512-BF16 or AMX)"
            continue
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        mm = 2 * n**3 / _best_seconds(lambda a=a, b=b: a @ b, repeats, device)
        x = torch.randn(batch, channels, side, side, device=device, dtype=dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 1, 1, device=device, dtype=dtype)
        w = w.contiguous(memory_format=torch.channels_last)
        conv = (
            2
            * batch
            * side
            * side
            * channels**2
            / _best_seconds(lambda x=x, w=w: F.conv2d(x, w), repeats, device)
        )
        out[name] = {
            "matmul_gflops": mm / 1e9,
            "conv1x1_gflops": conv / 1e9,
            "peak_gflops": max(mm, conv) / 1e9,
        }
    return out


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    with contextlib.suppress(OSError, AttributeError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        info["cpu_model"] = fields.get("model name")
        info["cpu_mhz"] = float(fields["cpu MHz"]) if "cpu MHz" in fields else None
        flags = set(fields.get("flags", "").split())
        wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_tile")
        info["cpu_flags"] = [f for f in wanted if f in flags]
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["memory_gb"] = round(float(mem[1]) / 2**20, 1)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


# --- the two training paths -------------------------------------------------------------------------------


class _UInt8Dataset(torch.utils.data.Dataset):
    """In-memory uint8 images served one by one (the "data through DataLoader workers" lever)."""

    def __init__(self, data: ImageData) -> None:
        assert data.images is not None
        self.images, self.labels = data.images, data.labels
        self.image_shape = tuple(data.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


class Runner:
    """A path, set up and warmed up; ``run(k)`` takes k timed steps and says how long they took and how much
    CPU time this process and its DataLoader workers used meanwhile (on a shared machine, CPU time / wall
    time shows how much of the machine the path actually got)."""

    spec: PathSpec
    device: torch.device
    info: dict[str, Any]

    def run(self, steps: int) -> dict[str, Any]:
        cpu, workers, faults = time.process_time(), _children_cpu_seconds(), _minor_faults()
        reply = self._steps(steps)
        reply["cpu_seconds"] = time.process_time() - cpu
        reply["workers_cpu_seconds"] = _children_cpu_seconds() - workers
        reply["minor_faults"] = _minor_faults() - faults
        return reply

    def _steps(self, steps: int) -> dict[str, Any]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return memory_stats(self.device)

    def close(self) -> None:
        pass


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OursRunner(Runner):
    """The default path of ``simclrv2 pretrain``, built the way :func:`simclrv2.engine.pretrain.pretrain`
    builds it (one process, no DDP), stepping with ``_Trainer.train_step``."""

    def __init__(self, spec: PathSpec) -> None:
        t0 = time.perf_counter()
        self.spec = spec
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-")
        config = pretrain_config(spec, self.tmp.name)
        setup = prepare(config)
        self.device = setup.device
        if spec.data_loader == "workers":
            streamed = ImageData(None, setup.train.labels, setup.train.classes, _UInt8Dataset(setup.train))
            setup.loader = BatchLoader(
                streamed, spec.batch, setup.device, seed=spec.seed, num_workers=spec.num_workers
            )
        self.setup, self.config = setup, config
        self.rss_base_mb = rss_mb()
        # As pretrain() does:
        seed_everything(config.seed)
        module = PretrainModule(build_simclr_model(config, setup.small_images), None).to(setup.device)
        if config.channels_last:
            module = module.to(memory_format=torch.channels_last)
        if spec.optimizer == "loop-lars":
            groups = param_groups(module, weight_decay=config.optim.weight_decay)
            optimizer: torch.optim.Optimizer = LoopLARS(
                groups,
                lr=setup.peak_lr,
                momentum=config.optim.momentum,
                weight_decay=config.optim.weight_decay,
            )
        else:
            optimizer = build_optimizer(module, config, setup.peak_lr)
        self.module, self.optimizer = module, optimizer
        train_module: nn.Module = torch.compile(module) if config.compile else module  # type: ignore[assignment]
        self.trainer = _Trainer(setup, train_module, optimizer, logger=None)  # type: ignore[arg-type]
        self.crop = setup.augment.crop_size
        self.flops = step_flops(config, setup.small_images, spec, self.crop, self.device)
        self.views: Iterator[tuple[Tensor, Tensor]] | None = None
        self.ref_loader = None
        if spec.augment == "workers":  # the batched-augmentation lever: PIL per image in workers instead
            assert setup.train.images is not None
            self.ref_loader, self.ref_sampler = make_reference_loader(
                setup.train.images, setup.train.labels, spec.batch, self.crop, spec.color_strength,
                setup.augment.blur, spec.num_workers, batches_per_iter=1, seed=spec.seed,
                pin_memory=self.device.type == "cuda",
            )  # fmt: skip
        self.batches = self._batches()
        self.step = 0
        self.setup_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.run(spec.warmup_steps)
        self.info = {
            "setup_seconds": self.setup_seconds,
            "warmup_seconds": time.perf_counter() - t1,
            "flops_per_step": self.flops,
            "precision": setup.precision,
            "crop": self.crop,
            "rss_base_mb": self.rss_base_mb,
            "backbone_params": sum(p.numel() for p in module.model.backbone.parameters()),
        }

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = 0
        while True:
            yield from self.setup.loader.epoch(epoch)
            epoch += 1

    def _steps(self, steps: int) -> dict[str, Any]:
        if steps <= 0:
            return {"seconds": 0.0, "loss": math.nan}
        s, c = self.setup, self.config
        t = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        if self.ref_loader is not None:
            self.ref_sampler.batches_per_iter = steps
            for x1, x2, labels in self.ref_loader:
                views = torch.cat([x1, x2]).to(self.device, non_blocking=True)
                set_learning_rate(
                    self.optimizer, warmup_cosine(self.step, s.total_steps, s.warmup_steps, s.peak_lr)
                )
                loss, _ = contrastive_step(
                    self.trainer.module, self.optimizer, views, labels.to(self.device), c.temperature,
                    self.device, s.precision, c.channels_last,
                )  # fmt: skip
                loss_sum += loss
                if self.spec.sync_every_step:
                    loss.item()
                self.step += 1
        else:
            for _ in range(steps):
                images, labels = next(self.batches)
                loss, _ = self.trainer.train_step(images, labels, self.step)
                loss_sum += loss
                if self.spec.sync_every_step:
                    loss.item()
                self.step += 1
        mean_loss = loss_sum.item() / steps  # the one host sync (a log period's)
        _sync(self.device)
        return {"seconds": time.perf_counter() - t, "loss": mean_loss}

    def close(self) -> None:
        self.batches.close()
        self.tmp.cleanup()


class ReferenceRunner(Runner):
    """The typical recipe (:mod:`benchmarks.reference`) on the same data, model init and LR schedule."""

    def __init__(self, spec: PathSpec) -> None:
        t0 = time.perf_counter()
        self.spec = spec
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-")
        config = pretrain_config(spec, self.tmp.name)
        setup = prepare(config)
        self.setup, self.config = setup, config
        self.device = setup.device
        self.rss_base_mb = rss_mb()
        seed_everything(config.seed)  # the same initial weights as ours
        self.model = build_simclr_model(config, setup.small_images).to(self.device)
        groups = param_groups(self.model, weight_decay=config.optim.weight_decay)
        if spec.optimizer == "sgd":
            for g in groups:
                g["weight_decay"] = config.optim.weight_decay if g.get("weight_decay_enabled", True) else 0.0
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=setup.peak_lr, momentum=config.optim.momentum
            )
        else:
            self.optimizer = LoopLARS(
                groups,
                lr=setup.peak_lr,
                momentum=config.optim.momentum,
                weight_decay=config.optim.weight_decay,
            )
        self.crop = setup.augment.crop_size
        self.flops = step_flops(config, setup.small_images, spec, self.crop, self.device)
        assert setup.train.images is not None
        self.loader, self.sampler = make_reference_loader(
            setup.train.images, setup.train.labels, spec.batch, self.crop, spec.color_strength,
            setup.augment.blur, spec.num_workers, batches_per_iter=1, seed=spec.seed,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip
        self.step = 0
        self.model.train()
        self.setup_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.run(spec.warmup_steps)
        self.info = {
            "setup_seconds": self.setup_seconds,
            "warmup_seconds": time.perf_counter() - t1,
            "flops_per_step": self.flops,
            "precision": "fp32",
            "crop": self.crop,
            "rss_base_mb": self.rss_base_mb,
            "backbone_params": sum(p.numel() for p in self.model.backbone.parameters()),
        }

    def _steps(self, steps: int) -> dict[str, Any]:
        if steps <= 0:
            return {"seconds": 0.0, "loss": math.nan}
        s = self.setup
        t = time.perf_counter()
        total = 0.0
        self.sampler.batches_per_iter = steps
        for x1, x2, _labels in self.loader:
            x1 = x1.to(self.device, non_blocking=True)
            x2 = x2.to(self.device, non_blocking=True)
            set_learning_rate(
                self.optimizer, warmup_cosine(self.step, s.total_steps, s.warmup_steps, s.peak_lr)
            )
            total += reference_step(self.model, self.optimizer, x1, x2, self.config.temperature).item()
            self.step += 1
        _sync(self.device)
        return {"seconds": time.perf_counter() - t, "loss": total / steps}

    def close(self) -> None:
        self.tmp.cleanup()


def make_runner(spec: PathSpec) -> Runner:
    if spec.threads:
        torch.set_num_threads(spec.threads)
    return ReferenceRunner(spec) if spec.kind == "reference" else OursRunner(spec)


# --- worker processes ---------------------------------------------------------------------------------------


def worker_main(spec_json: str) -> int:
    """One path in its own process, driven by JSON lines on stdin: {"cmd": "run", "steps": k} / "stats" /
    "quit"; replies are JSON lines on stdout."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # the protocol owns the real stdout; stray prints go to stderr
    with contextlib.suppress(Exception):  # Linux: end with the orchestrator, even mid-step (PR_SET_PDEATHSIG)
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)

    def send(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")

    try:
        runner = make_runner(PathSpec(**json.loads(spec_json)))
        send({"ready": True, **runner.info})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "run":
                send(runner.run(int(cmd["steps"])))
            elif cmd["cmd"] == "stats":
                send(runner.stats())
            else:
                break
        runner.close()
    except Exception:
        send({"error": traceback.format_exc()})
        return 1
    return 0


class Worker:
    """The orchestrator's handle on a worker process (the same interface as a :class:`Runner`)."""

    def __init__(self, spec: PathSpec) -> None:
        self.spec = spec
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "_worker", json.dumps(asdict(spec))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.info = self._call(None)

    def _call(self, cmd: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if cmd is not None:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.spec.label!r} died (exit code {self.proc.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            self.proc.wait()
            raise RuntimeError(f"benchmark worker {self.spec.label!r} failed:\n{reply['error']}")
        return reply

    def run(self, steps: int) -> dict[str, Any]:
        return self._call({"cmd": "run", "steps": steps})

    def stats(self) -> dict[str, Any]:
        return self._call({"cmd": "stats"})

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- measuring: interleaved repetitions -------------------------------------------------------------------


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def compare(specs: Sequence[PathSpec], steps: int, reps: int, inprocess: bool = False) -> dict[str, Any]:
    """Set up every path (one after another), then ``reps`` rounds of ``steps`` steps of each path, the
    order rotated every round; images/s per round, medians, and each median's ratio to the first path's."""
    handles: list[Any] = []
    try:
        for spec in specs:
            handles.append(make_runner(spec) if inprocess else Worker(spec))
        seconds: list[list[float]] = [[] for _ in specs]
        losses: list[list[float]] = [[] for _ in specs]
        busy: list[list[float]] = [[] for _ in specs]  # cores' worth of CPU the path got, per repetition
        faults: list[list[float]] = [[] for _ in specs]  # minor page faults per step
        loads = []
        for r in range(reps):
            loads.append(_load())
            for i in [(r + k) % len(specs) for k in range(len(specs))]:
                reply = handles[i].run(steps)
                seconds[i].append(reply["seconds"])
                losses[i].append(reply["loss"])
                busy[i].append((reply["cpu_seconds"] + reply["workers_cpu_seconds"]) / reply["seconds"])
                faults[i].append(reply["minor_faults"] / steps)
                print(
                    f"rep {r + 1}/{reps} {specs[i].label}: {steps * specs[i].batch / reply['seconds']:.1f} "
                    f"images/s, {busy[i][-1]:.2f} cores busy (load {loads[-1]})",
                    file=sys.stderr,
                    flush=True,
                )
        memory = [h.stats() for h in handles]
        infos = [h.info for h in handles]
    finally:
        for h in handles:
            h.close()
    paths = []
    rows = zip(specs, seconds, losses, busy, faults, infos, memory, strict=True)
    for spec, secs, loss, cores, fault, info, mem in rows:
        ips = [steps * spec.batch / s for s in secs]
        median = statistics.median(ips)
        paths.append(
            {
                "label": spec.label,
                "spec": asdict(spec),
                "images_per_sec": ips,
                "median_images_per_sec": median,
                "median_step_seconds": spec.batch / median,
                "loss": loss,
                "cores_busy": cores,
                "page_faults_per_step": fault,
                **info,
                "memory": mem,
            }
        )
    base = paths[0]["median_images_per_sec"]
    for p in paths:
        p["ratio_to_first"] = p["median_images_per_sec"] / base
    return {
        "steps_per_rep": steps,
        "reps": reps,
        "inprocess": inprocess,
        "load_avg_1min_per_rep": loads,
        "paths": paths,
    }


def attach_flops(result: dict[str, Any], peak: dict[str, Any]) -> None:
    """Achieved FLOP/s of every path (FLOPs per step / median step time) and its fraction of the
    measured peak for the path's precision."""
    for p in result["paths"]:
        achieved = p["flops_per_step"] / p["median_step_seconds"]
        p["achieved_gflops"] = achieved / 1e9
        dtype = "bf16" if p.get("precision") == "bf16" else "fp32"
        p["peak_dtype"] = dtype
        p["fraction_of_peak"] = achieved / 1e9 / peak[dtype]["peak_gflops"] if peak.get(dtype) else None


# --- modes -----------------------------------------------------------------------------------------------


def base_spec(args: argparse.Namespace) -> PathSpec:
    return PathSpec(
        backbone=args.backbone,
        data=args.data,
        data_size=args.data_size,
        image_size=args.image_size,
        crop=args.crop,
        batch=args.batch,
        num_workers=args.workers,
        threads=args.threads,
        device=args.device,
        warmup_steps=args.warmup,
        compile=args.compile,
        grad_checkpoint=args.grad_checkpoint,
    )


def reference_spec(spec: PathSpec) -> PathSpec:
    return spec.replace(
        label="reference", kind="reference", precision="fp32", channels_last=False, optimizer="loop-lars",
        augment="workers", compile=False, grad_checkpoint=False,
    )  # fmt: skip


def mode_compare(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    result = compare([reference_spec(ours), ours], args.steps, args.reps, args.inprocess)
    result["ratio"] = result["paths"][1]["ratio_to_first"]
    return result


LEVERS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (what the variant does instead of ours' default, the spec change)
    "bf16 autocast": ("fp32", {"precision": "fp32"}),
    "channels-last": ("NCHW", {"channels_last": False}),
    "batched on-device augmentation": (
        "per-image PIL transforms in DataLoader workers",
        {"augment": "workers"},
    ),
    "data held in memory/on the device": (
        "uint8 images through DataLoader workers",
        {"data_loader": "workers"},
    ),
    "foreach LARS": ("per-parameter Python loop (LoopLARS)", {"optimizer": "loop-lars"}),
    "no host sync per step": ("loss.item() after every step", {"sync_every_step": True}),
    "torch.compile off": ("torch.compile(model)", {"compile": True}),
}


def mode_levers(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    chosen = [name for name in LEVERS if not args.no_compile or LEVERS[name][1] != {"compile": True}]
    specs = [ours.replace(label="ours (default)")]
    for name in chosen:
        specs.append(ours.replace(label=LEVERS[name][0], **LEVERS[name][1]))
    result = compare(specs, args.steps, args.reps, args.inprocess)
    result["levers"] = [
        {
            "lever": name,
            "variant": LEVERS[name][0],
            "speedup": 1.0 / p["ratio_to_first"],  # ours' default over the variant
            "variant_setup_seconds": p["setup_seconds"] + p["warmup_seconds"],
        }
        for name, p in zip(chosen, result["paths"][1:], strict=True)
    ]
    result["loss_precision"] = loss_cost(ours, result["paths"][0]["median_step_seconds"], args.smoke)
    return result


def loss_cost(spec: PathSpec, step_seconds: float, smoke: bool) -> dict[str, Any]:
    """What the fp32 softmax of NT-Xent costs: the loss's forward + backward on (2B, 128) projections in
    fp32 (ours) and in bf16 (the same math without the up-cast), against a whole step."""
    n = spec.batch
    device = torch.device(spec.device)
    z = torch.randn(2 * n, 128, device=device, requires_grad=True)
    eye = torch.eye(2 * n, dtype=torch.bool, device=device)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(device)

    def fp32() -> None:
        nt_xent(z[:n], z[n:], spec.temperature).backward()

    def bf16() -> None:
        zb = F.normalize(z.bfloat16(), dim=1)
        sim = (zb @ zb.T) / spec.temperature
        F.cross_entropy(sim.masked_fill(eye, -1e4), target).backward()

    reps = 1 if smoke else 10
    t32 = _best_seconds(fp32, reps, device)
    t16 = _best_seconds(bf16, reps, device)
    return {
        "fp32_loss_ms": 1e3 * t32,
        "bf16_loss_ms": 1e3 * t16,
        "step_ms": 1e3 * step_seconds,
        "fp32_loss_share_of_step": t32 / step_seconds,
    }


def mode_sweep(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    if args.over == "batch":
        specs = [
            ours.replace(label=f"batch {b}", batch=b, data_size=max(ours.data_size, 2 * b))
            for b in args.values
        ]
    else:
        depth = ours.backbone.split("_")[0]
        sk = ours.backbone.split("_")[-1]
        specs = [ours.replace(label=f"width {w:g}x", backbone=f"{depth}_{w:g}x_{sk}") for w in args.values]
    result = compare(specs, args.steps, args.reps, args.inprocess)
    result["over"] = args.over
    return result


def mode_checkpoint(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    specs = [
        ours.replace(label="ours", grad_checkpoint=False),
        ours.replace(label="ours + grad checkpoint", grad_checkpoint=True),
    ]
    return compare(specs, args.steps, args.reps, args.inprocess)


def _time_steps(step: Callable[[int], object], steps: int, reps: int, warmup: int) -> list[float]:
    for i in range(warmup):
        step(i)
    times, i = [], warmup
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(steps):
            step(i)
            i += 1
        times.append((time.perf_counter() - t) / steps)
    return times


def mode_stages(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    """Our classification-like stages on the same data and backbone (in this process): one training step
    of fine-tuning (from head layer 1), distillation (teacher forward + student step), linear evaluation
    through the frozen network (the augmented protocol), plus feature extraction, the L-BFGS fit of the
    default linear evaluation, and the kNN evaluation (bank = the training split)."""
    from simclrv2.engine.classify import ClassifierTrainer, TrainSettings
    from simclrv2.engine.evaluate import extract_features, knn_classify, topk_accuracy
    from simclrv2.engine.finetune import build_model, model_arch
    from simclrv2.engine.linear_eval import FrozenBackboneLinear, fit_logistic_regression
    from simclrv2.engine.runtime import autocast
    from simclrv2.losses import distillation_loss

    if ours.threads:
        torch.set_num_threads(ours.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench-")
    config = pretrain_config(ours, tmp.name)
    setup = prepare(config)
    device, precision, crop = setup.device, setup.precision, setup.augment.crop_size
    train, test = setup.train, setup.test
    assert test is not None
    classes = len(train.classes)
    out: dict[str, Any] = {"precision": precision, "batch": ours.batch, "crop": crop, "stages": {}}

    def settings(stage: str, optimizer: str = "lars") -> TrainSettings:
        return TrainSettings(
            stage=stage, run_dir=Path(tmp.name) / stage, seed=0, device=device, precision=precision,
            batch_size=ours.batch, epochs=100, peak_lr=0.01, optimizer=optimizer, crop_size=crop,
            show_progress=False,
        )  # fmt: skip

    def prepared(model: nn.Module) -> nn.Module:
        model = model.to(device)
        return model.to(memory_format=torch.channels_last) if config.channels_last else model

    def timed_trainer(name: str, trainer: ClassifierTrainer) -> None:
        batches = iter(trainer.loader.steps(0, trainer.total_steps))

        def step(i: int) -> None:
            images, labels = next(batches)
            trainer.train_step(images, labels, i).item()

        times = _time_steps(step, args.steps, args.reps, ours.warmup_steps)
        median = statistics.median(times)
        out["stages"][name] = {"images_per_sec": ours.batch / median, "step_seconds": times}

    arch = model_arch(ours.backbone, setup.small_images, 3, 128, 1, classes)
    timed_trainer(
        "fine-tune (from head layer 1)",
        ClassifierTrainer(settings("finetune"), prepared(build_model(arch)), train, test),
    )

    teacher = prepared(build_model(arch)).eval().requires_grad_(False)
    student_arch = model_arch(ours.backbone, setup.small_images, 0, 0, 0, classes)

    def distill_loss(model: nn.Module, images: Tensor, targets: Tensor, step: int) -> Tensor:
        with torch.no_grad(), autocast(device, precision):
            teacher_logits = teacher(images)
        with autocast(device, precision):
            student_logits = model(images)
        return distillation_loss(student_logits, teacher_logits, 0.1)

    timed_trainer(
        "distillation (self, teacher forward + student step)",
        ClassifierTrainer(
            settings("distill"), prepared(build_model(student_arch)), train, test, loss_fn=distill_loss
        ),
    )
    backbone = prepared(build_model(arch)).backbone
    linear = prepared(FrozenBackboneLinear(copy.deepcopy(backbone), classes))
    timed_trainer(
        "linear eval, augmented (frozen backbone)",
        ClassifierTrainer(settings("linear", "sgd"), linear, train, test),
    )

    # Default linear evaluation and kNN: features once, then L-BFGS / the kNN vote.
    limit = args.knn_bank
    t = time.perf_counter()
    train_f, train_l = extract_features(
        backbone, train, device, precision, batch_size=512, crop_size=crop, limit=limit, show_progress=False
    )
    bank_seconds = time.perf_counter() - t
    t = time.perf_counter()
    test_f, test_l = extract_features(
        backbone, test, device, precision, batch_size=512, crop_size=crop, show_progress=False
    )
    test_seconds = time.perf_counter() - t
    t = time.perf_counter()
    scores = knn_classify(train_f, train_l, test_f, classes)
    topk_accuracy(scores, test_l)
    vote_seconds = time.perf_counter() - t
    out["stages"]["feature extraction (eval, centre crop)"] = {
        "images_per_sec": (len(train_f) + len(test_f)) / (bank_seconds + test_seconds)
    }
    out["knn"] = {
        "bank_images": len(train_f),
        "test_images": len(test_f),
        "feature_seconds": bank_seconds + test_seconds,
        "vote_seconds": vote_seconds,
        "total_seconds": bank_seconds + test_seconds + vote_seconds,
    }
    t = time.perf_counter()
    fit_logistic_regression(train_f, train_l, classes, l2=1e-4, max_iter=5 if args.smoke else 100)
    out["linear_eval_lbfgs"] = {"fit_seconds_per_l2": time.perf_counter() - t, "train_images": len(train_f)}
    tmp.cleanup()
    return out


def mode_knn(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    """The same fixed short pretraining with the reference and with ours (same data, initial weights, LR
    schedule, objective), then weighted kNN (k=200, T=0.1) of each backbone with the package's evaluation,
    both in fp32, bank = the first ``--knn-bank`` training images (all by default)."""
    from simclrv2.engine.evaluate import knn_accuracy

    runs = []
    for seed in args.seeds:
        for spec in (reference_spec(ours), ours):
            spec = spec.replace(
                seed=seed, epochs=args.epochs, warmup_epochs=args.warmup_epochs, warmup_steps=0
            )
            runner = make_runner(spec)
            reply = runner.run(args.train_steps)
            backbone = (
                runner.model.backbone if isinstance(runner, ReferenceRunner) else runner.module.model.backbone
            )
            assert runner.setup.test is not None
            t = time.perf_counter()
            knn = knn_accuracy(
                backbone, runner.setup.train, runner.setup.test, runner.device, "fp32",
                train_limit=args.knn_bank, crop_size=runner.crop, channels_last=False,
            )  # fmt: skip
            runs.append(
                {
                    "label": spec.label, "seed": seed, "train_steps": args.train_steps,
                    "train_seconds": reply["seconds"], "final_loss_mean": reply["loss"],
                    "knn_top1": knn["top1"], "knn_top5": knn["top5"], "knn_seconds": time.perf_counter() - t,
                    "spec": asdict(spec),
                }
            )  # fmt: skip
            runner.close()
    ref = [r for r in runs if r["label"] == "reference"]
    ours_runs = [r for r in runs if r["label"] != "reference"]
    summary = {
        "reference_knn_top1_mean": statistics.mean(r["knn_top1"] for r in ref),
        "ours_knn_top1_mean": statistics.mean(r["knn_top1"] for r in ours_runs),
        "end_to_end_ratio": sum(r["train_seconds"] for r in ref) / sum(r["train_seconds"] for r in ours_runs),
    }
    summary["difference_points"] = summary["ours_knn_top1_mean"] - summary["reference_knn_top1_mean"]
    return {"runs": runs, "summary": summary}


# Self CPU time of the profiled step's ops, by what they are (first match wins).
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("convolution forward", ("aten::mkldnn_convolution", "aten::_convolution", "aten::thnn_conv")),
    ("convolution backward", ("aten::convolution_backward", "aten::mkldnn_convolution_backward")),
    ("batch norm", ("batch_norm",)),
    ("ReLU (forward and backward)", ("relu", "threshold_backward", "clamp_min")),
    (
        "residual adds, casts, copies",
        ("aten::add_", "aten::add", "aten::copy_", "aten::_to_copy", "aten::to"),
    ),
    ("matmuls (head, loss)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul")),
    (
        "optimiser",
        ("_foreach", "aten::norm", "linalg_vector_norm", "aten::mul_", "aten::sub_", "aten::where"),
    ),
]


def _categorise(events: Any) -> dict[str, float]:
    out: dict[str, float] = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    out["other"] = 0.0
    for e in events:
        seconds = e.self_cpu_time_total / 1e6
        for name, keys in PROFILE_CATEGORIES:
            if any(k in e.key for k in keys):
                out[name] += seconds
                break
        else:
            out["other"] += seconds
    return out


def mode_profile(args: argparse.Namespace, ours: PathSpec) -> dict[str, Any]:
    """Where a step's time goes, for both paths (in this process): the wall time of getting the two views
    (ours: the batched augmentation; the reference: waiting for the DataLoader workers), then the training
    step under ``torch.profiler``, its ops' self CPU time grouped by kind. One warm-up step first; the
    median of ``--reps`` profiled steps per path."""
    from torch.profiler import ProfilerActivity, profile

    from simclrv2.data import two_view_batch
    from simclrv2.engine.runtime import step_generator

    out: dict[str, Any] = {"paths": []}
    for spec in (reference_spec(ours), ours):
        runner = make_runner(spec.replace(warmup_steps=1))
        views_s, step_s, cats = [], [], []
        for rep in range(args.reps):
            if isinstance(runner, ReferenceRunner):
                runner.sampler.batches_per_iter = 1
                t = time.perf_counter()
                x1, x2, _ = next(iter(runner.loader))
                views_s.append(time.perf_counter() - t)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    t = time.perf_counter()
                    reference_step(runner.model, runner.optimizer, x1, x2, spec.temperature)
                    step_s.append(time.perf_counter() - t)
            else:
                assert isinstance(runner, OursRunner)
                images, labels = next(runner.batches)
                s = runner.setup
                t = time.perf_counter()
                views = two_view_batch(images, s.augment, step_generator(s.device, spec.seed, 10_000 + rep))
                views_s.append(time.perf_counter() - t)
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    t = time.perf_counter()
                    contrastive_step(
                        runner.trainer.module, runner.optimizer, views, labels, spec.temperature,
                        runner.device, s.precision, runner.config.channels_last,
                    )  # fmt: skip
                    step_s.append(time.perf_counter() - t)
            cats.append(_categorise(prof.key_averages()))
        median = sorted(range(len(step_s)), key=lambda i: step_s[i])[len(step_s) // 2]  # the median step
        out["paths"].append(
            {
                "label": spec.label,
                "precision": runner.info["precision"],
                "flops_per_step": runner.flops,
                "views_seconds": statistics.median(views_s),
                "step_seconds": step_s[median],
                "categories": cats[median],
            }
        )
        runner.close()
    return out


# --- tables ------------------------------------------------------------------------------------------------


def _f(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _mem(p: dict[str, Any], inprocess: bool) -> str:
    m = p["memory"]
    if inprocess:
        return "- (in-process)"
    if "cuda_peak_mb" in m:
        return f"{m['cuda_peak_mb']:,.0f} (GPU)"
    text = f"{m['rss_peak_mb']:,.0f}"
    if m.get("workers"):
        text += f" + {m['workers_rss_peak_mb']:,.0f} in {m['workers']} workers"
    return text


def _cores(p: dict[str, Any]) -> str:
    return f"{statistics.median(p['cores_busy']):.2f}" if p.get("cores_busy") else "-"


def _gflop(flops: float) -> str:
    g = flops / 1e9
    return f"{g:,.0f}" if g >= 100 else f"{g:.3g}"


def _spread(p: dict[str, Any]) -> str:
    ips = p["images_per_sec"]
    return f"{_f(p['median_images_per_sec'])} ({_f(min(ips))}-{_f(max(ips))})"


def _header(result: dict[str, Any]) -> str:
    m = result["machine"]
    loads = [x for x in result.get("load_avg_1min_per_rep", []) if x is not None]
    load = f", 1-min load {min(loads):.1f}-{max(loads):.1f} during the run" if loads else ""
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    threads = result.get("threads_per_path")
    threads_text = f", {threads} torch thread{'s' if threads != 1 else ''} per path" if threads else ""
    return (
        f"_{result['name']}: {m.get('cpu_model')} ({m.get('cpus_usable', m.get('cpu_count'))} cores, "
        f"{' '.join(m.get('cpu_flags', []))}){gpu}, torch {m['torch']}{threads_text}{load}; "
        f"`{result['command']}`_\n\n"
    )


def table(result: dict[str, Any]) -> str:
    """Markdown for one result file."""
    mode = result["mode"]
    text = _header(result)
    if mode in ("compare", "sweep", "checkpoint"):
        peak = result.get("peak")
        faults = mode != "compare" and all("page_faults_per_step" in p for p in result["paths"])
        text += "| path | images/s median (min-max) | vs first | step s | cores busy | peak RSS MB "
        text += "| peak RSS above the data-loaded baseline MB | page faults/step " if faults else ""
        text += "| GFLOP/step | GFLOP/s | % of peak |\n"
        text += "|---" * (11 if faults else 9) + "|\n"
        for p in result["paths"]:
            frac = p.get("fraction_of_peak")
            share = "-" if frac is None else f"{100 * frac:.0f}% ({p['peak_dtype']})"
            text += (
                f"| {p['label']} | {_spread(p)} | {p['ratio_to_first']:.2f}x | "
                f"{p['median_step_seconds']:.3f} | {_cores(p)} | {_mem(p, result.get('inprocess', False))} | "
            )
            if faults:
                above = p["memory"]["rss_peak_mb"] - p["rss_base_mb"] if p.get("rss_base_mb") else None
                text += f"{'-' if result.get('inprocess') else _f(above)} | "
                text += f"{_f(statistics.median(p['page_faults_per_step']))} | "
            text += f"{_gflop(p['flops_per_step'])} | {_f(p.get('achieved_gflops'))} | {share} |\n"
        if peak:
            text += (
                f"\nMeasured peak ({peak['method']}): fp32 {peak['fp32']['peak_gflops']:,.0f} GFLOP/s, "
                + (
                    f"bf16 {peak['bf16']['peak_gflops']:,.0f} GFLOP/s.\n"
                    if peak.get("bf16")
                    else f"bf16 {peak.get('bf16_skipped', 'not measured')}.\n"
                )
            )
        if "ratio" in result:
            text += f"\n**ours / reference = {result['ratio']:.2f}x** (ratio of the medians).\n"
    elif mode == "levers":
        base = result["paths"][0]
        text += f"ours (default): {_spread(base)} images/s.\n\n"
        text += "| lever (ours' default) | variant measured instead | variant images/s | ours / variant |\n"
        text += "|---|---|---|---|\n"
        for lever, p in zip(result["levers"], result["paths"][1:], strict=True):
            extra = ""
            if lever["variant"].startswith("torch.compile"):
                extra = f" (compile + warmup {lever['variant_setup_seconds']:.0f} s)"
            text += (
                f"| {lever['lever']} | {lever['variant']}{extra} | {_spread(p)} | {lever['speedup']:.2f}x |\n"
            )
        lc = result["loss_precision"]
        text += (
            f"\nfp32 softmax in NT-Xent: the loss's forward + backward takes {lc['fp32_loss_ms']:.1f} ms "
            "in fp32 "
            f"({100 * lc['fp32_loss_share_of_step']:.1f}% of a {lc['step_ms']:.0f} ms step) vs "
            f"{lc['bf16_loss_ms']:.1f} ms in bf16: kept in fp32.\n"
        )
    elif mode == "stages":
        text += "| stage | images/s |\n|---|---|\n"
        for name, s in result["stages"].items():
            text += f"| {name} | {_f(s['images_per_sec'])} |\n"
        k, lin = result["knn"], result["linear_eval_lbfgs"]
        text += (
            f"\nkNN evaluation: {k['total_seconds']:.1f} s ({k['bank_images']:,} bank + {k['test_images']:,} "
            f"test images: features {k['feature_seconds']:.1f} s, vote {k['vote_seconds']:.2f} s). "
            f"Default linear eval: one L-BFGS fit on {lin['train_images']:,} cached features "
            f"{lin['fit_seconds_per_l2']:.1f} s (x {6} fits: 5 L2 values + refit).\n"
        )
    elif mode == "profile":
        ref, ours = result["paths"]
        text += "| seconds per step | reference (fp32, NCHW) | ours | reference / ours |\n|---|---|---|---|\n"
        rows = [
            (
                "two views: " + "DataLoader wait / batched augmentation",
                ref["views_seconds"],
                ours["views_seconds"],
            )
        ]
        rows += [(k, ref["categories"][k], ours["categories"][k]) for k in ref["categories"]]
        rows.append(("**training step (wall)**", ref["step_seconds"], ours["step_seconds"]))
        rows.append(
            (
                "**total**",
                ref["step_seconds"] + ref["views_seconds"],
                ours["step_seconds"] + ours["views_seconds"],
            )
        )
        for name, a, b in rows:
            text += f"| {name} | {a:.3f} | {b:.3f} | {a / b if b else math.inf:.1f}x |\n"
        peak = result.get("peak")
        if peak:
            for p in (ref, ours):
                conv = p["categories"]["convolution forward"] + p["categories"]["convolution backward"]
                dtype = "bf16" if p["precision"] == "bf16" else "fp32"
                if not peak.get(dtype):
                    continue
                rate = p["flops_per_step"] / conv / 1e9 if conv else math.nan
                text += (
                    f"\n{p['label']}: convolutions (+ the small head/loss matmuls) run at {rate:,.0f} GFLOP/s"
                    " = "
                    f"{100 * rate / peak[dtype]['peak_gflops']:.0f}% of the measured {dtype} peak "
                    f"({peak[dtype]['peak_gflops']:,.0f} GFLOP/s)."
                )
            text += "\n"
    elif mode == "knn":
        text += "| path | seed | steps | train s | kNN top-1 | kNN top-5 |\n|---|---|---|---|---|---|\n"
        for r in result["runs"]:
            text += (
                f"| {r['label']} | {r['seed']} | {r['train_steps']} | {r['train_seconds']:.0f} | "
                f"{r['knn_top1']:.2f} | {r['knn_top5']:.2f} |\n"
            )
        s = result["summary"]
        text += (
            f"\nkNN top-1: ours {s['ours_knn_top1_mean']:.2f}% vs reference "
            f"{s['reference_knn_top1_mean']:.2f}% "
            f"({s['difference_points']:+.2f} points); training wall time reference / ours = "
            f"{s['end_to_end_ratio']:.2f}x.\n"
        )
    return text


def load_results(paths: Sequence[Path] | None = None) -> list[tuple[str, dict[str, Any]]]:
    files = sorted(RESULTS_DIR.glob("*.json")) if not paths else list(paths)
    return [(f.stem, json.loads(Path(f).read_text())) for f in files]


def update_readme(readme: Path = README) -> int:
    """Replace every ``<!-- table:NAME -->...<!-- /table -->`` block by the table of results/NAME.json."""
    text = readme.read_text()
    results = dict(load_results())
    out, pos, count = [], 0, 0
    while True:
        start = text.find("<!-- table:", pos)
        if start < 0:
            break
        name_end = text.index("-->", start)
        name = text[start + len("<!-- table:") : name_end].strip()
        end = text.index("<!-- /table -->", name_end)
        if name not in results:
            raise FileNotFoundError(f"{readme} wants results/{name}.json, which does not exist")
        out += [
            text[pos : name_end + 3],
            "\n",
            table(results[name]),
            text[end : end + len("<!-- /table -->")],
        ]
        pos = end + len("<!-- /table -->")
        count += 1
    out.append(text[pos:])
    readme.write_text("".join(out))
    return count


# --- command line ------------------------------------------------------------------------------------------


MODES = ("compare", "levers", "sweep", "checkpoint", "stages", "knn", "profile", "table", "readme")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/throughput.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Modes: "
        + ", ".join(MODES)
        + ". See benchmarks/README.md for the commands behind every table.",
    )
    p.add_argument("mode", nargs="?", default="compare", choices=MODES)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, every mode in seconds (CI)")
    p.add_argument("--name", help="result file name (default: mode and settings)")
    p.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="directory for the JSON (default %(default)s)"
    )
    p.add_argument("--backbone", default="r18_1x_sk0")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "fashion-mnist"])
    p.add_argument("--data-size", type=int, default=4096, help="synthetic training images")
    p.add_argument("--image-size", type=int, default=32, help="synthetic image side")
    p.add_argument("--crop", type=int, help="training crop side (default: the images' side)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=2, help="timed steps per path per repetition")
    p.add_argument("--reps", type=int, default=5, help="repetitions (paths interleaved)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after setup")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the reference (default 2)")
    p.add_argument("--threads", type=int, help="torch threads per worker process (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="ours with torch.compile")
    p.add_argument("--grad-checkpoint", action="store_true", help="ours with activation checkpointing")
    p.add_argument("--no-compile", action="store_true", help="levers: skip the torch.compile variant")
    p.add_argument("--over", choices=["batch", "width"], default="batch", help="sweep: what varies")
    p.add_argument("--values", type=float, nargs="+", help="sweep: the batch sizes or widths")
    p.add_argument("--inprocess", action="store_true", help="run paths in this process (no memory figures)")
    p.add_argument("--train-steps", type=int, default=120, help="knn: pretraining steps per path")
    p.add_argument("--epochs", type=int, default=1, help="knn: epochs the LR schedule spans")
    p.add_argument("--warmup-epochs", type=float, default=0.1, help="knn: LR warmup")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="knn: seeds")
    p.add_argument("--knn-bank", type=int, help="knn/stages: kNN bank size (default: whole training split)")
    p.add_argument("files", nargs="*", type=Path, default=[], help=argparse.SUPPRESS)
    return p


def _smoke(args: argparse.Namespace) -> None:
    args.backbone, args.batch, args.data, args.data_size, args.image_size = (
        "r18_0.25x_sk0",
        8,
        "synthetic",
        64,
        16,
    )
    args.crop, args.steps, args.reps, args.warmup, args.workers, args.threads = 16, 1, 2, 1, 1, 1
    args.no_compile, args.train_steps, args.knn_bank, args.seeds = True, 2, 64, [0]
    if args.mode == "sweep":
        args.values = [4, 8] if args.over == "batch" else [0.125, 0.25]


def default_name(args: argparse.Namespace, ours: PathSpec) -> str:
    crop = ours.crop or (28 if ours.data == "fashion-mnist" else ours.image_size)
    name = f"{args.mode}-{ours.backbone}-{crop}px-b{ours.batch}"
    if args.mode == "sweep":
        model = ours.backbone if args.over == "batch" else ours.backbone.split("_")[0]
        name = f"sweep-{args.over}-{model}-{crop}px"
        if args.over == "width":
            name += f"-b{ours.batch}"
    if ours.device != "cpu":
        name += f"-{ours.device.replace(':', '')}"
    return name + ("-smoke" if args.smoke else "")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1])
    args = build_parser().parse_args(argv)
    if args.mode == "table":
        for name, result in load_results(args.files or None):
            print(f"### {name}\n\n{table(result)}")
        return 0
    if args.mode == "readme":
        print(f"{README}: {update_readme()} tables regenerated")
        return 0
    if args.smoke:
        _smoke(args)
    if args.mode == "sweep" and not args.values:
        args.values = [64, 128, 256, 512, 1024] if args.over == "batch" else [0.25, 0.5, 1, 2]
    if args.mode == "sweep" and args.over == "batch":
        args.values = [int(v) for v in args.values]
    ours = base_spec(args)
    threads = torch.get_num_threads()  # in-process runs may set their own; restored below
    try:
        return _run_mode(args, argv, ours)
    finally:
        torch.set_num_threads(threads)


def _run_mode(args: argparse.Namespace, argv: list[str], ours: PathSpec) -> int:
    device = torch.device(args.device)
    command = "python benchmarks/throughput.py " + " ".join(argv)
    machine = machine_info(device)
    run: dict[str, Callable[[argparse.Namespace, PathSpec], dict[str, Any]]] = {
        "compare": mode_compare,
        "levers": mode_levers,
        "sweep": mode_sweep,
        "checkpoint": mode_checkpoint,
        "stages": mode_stages,
        "knn": mode_knn,
        "profile": mode_profile,
    }
    if args.threads:  # the peak at the paths' thread count
        torch.set_num_threads(args.threads)
    peak = None
    if args.mode in ("compare", "sweep", "checkpoint", "profile"):
        peak = measure_peak(device, args.smoke)
    t0 = time.time()
    result = run[args.mode](args, ours)
    if peak is not None:  # again after the run: a burst of load from elsewhere only ever lowers a measurement
        after = measure_peak(device, args.smoke)
        for dtype in ("fp32", "bf16"):
            if not peak.get(dtype):
                continue
            for key in ("matmul_gflops", "conv1x1_gflops", "peak_gflops"):
                peak[dtype][key] = max(peak[dtype][key], after[dtype][key])
        peak["method"] += ", before and after the run (the higher)"
        if args.mode != "profile":
            attach_flops(result, peak)
    result = {
        "mode": args.mode,
        "name": args.name or default_name(args, ours),
        "command": command,
        "machine": machine,
        "peak": peak,
        "threads_per_path": args.threads or machine["torch_threads"],
        "wall_seconds": time.time() - t0,
        "load_avg_1min_at_end": _load(),
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{result['name']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
