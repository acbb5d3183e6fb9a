"""Step time of pretraining with the MoCo-style memory against without it, measured side by side.

    PYTHONPATH=src python scripts/bench_memory.py [CONFIG] [--steps 30] [--sizes 0 16384 65536] [--threads 1]

One process builds one model per memory size (same initial weights, same data and augmentation) and runs
their training steps interleaved, rotating which runs first, so that load from other jobs on a shared machine
hits every arm alike. Queues are pre-filled with random unit keys so every step pays the steady-state cost
(a real run reaches it after size / (2 * batch_size) steps). Prints the median wall-clock and process-CPU
seconds per step, images/s and the ratio to memory off. Peak memory is not measured here (one process holds
every arm): compare the peak RSS of separate `simclrv2 pretrain` runs (docs/memory.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from simclrv2.config import MemoryConfig, PretrainConfig, load_config
from simclrv2.data import two_view_batch
from simclrv2.engine.pretrain import (
    PretrainModule,
    build_memory,
    build_optimizer,
    build_simclr_model,
    contrastive_step,
    prepare,
)
from simclrv2.engine.runtime import seed_everything, step_generator
from simclrv2.optim import set_learning_rate, warmup_cosine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default="configs/fashion_mnist.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 16384, 65536])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads; 1 on a loaded machine (OpenMP threads waiting for a descheduled sibling make "
        "step time depend on the number of kernels, not the work); default: torch's",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_config(PretrainConfig, args.config, ["run_dir=/tmp/bench_memory"])
    setup = prepare(base)
    device = setup.device
    arms = []
    for size in args.sizes:
        config = dataclasses.replace(base, memory=MemoryConfig(size=size))
        seed_everything(config.seed)
        module = PretrainModule(build_simclr_model(config, setup.small_images), len(setup.train.classes))
        module = module.to(device).to(memory_format=torch.channels_last)
        memory = build_memory(module.model, config)
        if memory is not None:
            dim = module.model.head.out_dims[-1]
            memory.queue.push(F.normalize(torch.randn(size, dim, device=device), dim=1))
        arms.append((size, module, build_optimizer(module, config, setup.peak_lr), memory))
    wall: dict[int, list[float]] = {size: [] for size in args.sizes}
    cpu: dict[int, list[float]] = {size: [] for size in args.sizes}
    for step, (images, labels) in enumerate(setup.loader.epoch(0)):
        if step == args.warmup + args.steps:
            break
        views = two_view_batch(images, setup.augment, step_generator(device, base.seed, step))
        lr = warmup_cosine(step, setup.total_steps, setup.warmup_steps, setup.peak_lr)
        for i in range(len(arms)):
            size, module, optimizer, memory = arms[(step + i) % len(arms)]
            set_learning_rate(optimizer, lr)
            t0, c0 = time.perf_counter(), time.process_time()
            loss, _ = contrastive_step(
                module, optimizer, views, labels, base.temperature, device, setup.precision, True, memory
            )
            loss.item()  # wait for the device
            if step >= args.warmup:
                wall[size].append(time.perf_counter() - t0)
                cpu[size].append(time.process_time() - c0)
    print(
        f"{args.config}: batch {base.batch_size}, {base.model.backbone}, precision {setup.precision}, "
        f"{args.steps} timed steps per arm, {torch.get_num_threads()} threads"
    )
    ref_wall, ref_cpu = statistics.median(wall[args.sizes[0]]), statistics.median(cpu[args.sizes[0]])
    for size in args.sizes:
        w, c = statistics.median(wall[size]), statistics.median(cpu[size])
        print(
            f"memory.size={size:>6}: median {w:.3f} s/step wall ({base.batch_size / w:.0f} img/s, "
            f"x{w / ref_wall:.2f}), {c:.3f} s/step CPU (x{c / ref_cpu:.2f})"
        )


if __name__ == "__main__":
    main()
