"""Stage 1: contrastive pretraining (SPEC sections 1-5).

Data flows one way: config -> dataset (uint8, on the device when small) -> batched augmentation (two views)
-> backbone + 3-layer projection head on both views in one pass -> NT-Xent -> LARS with warmup + cosine
-> atomic checkpoint -> kNN monitor. Labels are never used by the contrastive loss; they only feed the
optional online linear probe on stop-gradient features and the kNN monitor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2 import distributed
from simclrv2.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    atomic_save,
    load_checkpoint,
    load_state_checked,
    rng_state,
    set_rng_state,
    unwrap,
)
from simclrv2.config import ConfigError, PretrainConfig, save_config, to_dict
from simclrv2.data import (
    AugmentConfig,
    BatchLoader,
    CropSpec,
    ImageData,
    distort_views,
    load_dataset,
    two_view_batch,
)
from simclrv2.data.datasets import folder_options
from simclrv2.data.subsets import subset_data
from simclrv2.engine.evaluate import extract_features, knn_classify, topk_accuracy
from simclrv2.engine.memory import MEMORY_KEY, MomentumMemory
from simclrv2.engine.runtime import (
    GracefulInterrupt,
    MetricsLogger,
    autocast,
    device_type,
    echo,
    explain_out_of_memory,
    nonfinite_error,
    nonfinite_parameters,
    progress,
    resolve_device,
    resolve_precision,
    seed_everything,
    step_generator,
    write_json,
)
from simclrv2.losses import nt_xent, nt_xent_with_memory
from simclrv2.models import Classifier, ProjectionHead, SimCLRModel, create_backbone
from simclrv2.optim import LARS, param_groups, scale_learning_rate, set_learning_rate, warmup_cosine

STAGE = "pretrain"
CHECKPOINT_NAME = "last.pt"


class PretrainModule(nn.Module):
    """The SimCLR model plus the optional online linear probe (trained on detached h).

    One ``forward`` for both, so that a DDP wrapper sees every parameter used in its forward.
    """

    def __init__(self, model: SimCLRModel, num_classes: int | None) -> None:
        super().__init__()
        self.model = model
        self.classifier = Classifier(model.backbone.num_features, num_classes) if num_classes else None

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        outputs = self.model(x)
        logits = None if self.classifier is None else self.classifier(outputs[0].detach())
        return outputs, logits


@dataclass
class PretrainSetup:
    """Everything derived from the config before the first step (so errors surface before work)."""

    config: PretrainConfig
    device: torch.device
    precision: str
    train: ImageData
    test: ImageData | None
    knn_bank: ImageData
    """The kNN monitor's memory bank: the labeled training images (all of them for fully labeled data)."""
    augment: AugmentConfig
    small_images: bool
    loader: BatchLoader
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float


def build_simclr_model(config: PretrainConfig, small_images: bool) -> SimCLRModel:
    backbone = create_backbone(config.model.backbone, small_images, config.model.tf_same_pool)
    backbone.grad_checkpoint = config.model.grad_checkpoint
    head = ProjectionHead(
        backbone.num_features, num_layers=config.model.head_layers, out_dim=config.model.head_dim
    )
    return SimCLRModel(backbone, head)


def prepare(config: PretrainConfig) -> PretrainSetup:
    """Resolve the device, read the data and derive the schedule; raises before any training."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    data_kwargs: dict[str, Any] = dict(
        root=config.data.root,
        download=config.data.download,
        seed=config.seed,
        image_size=config.data.load_size,
        bad_images=config.data.bad_images,
        **folder_options(config.data),
    )
    train = load_dataset(
        config.data.name, config.data.train_split, synthetic_size=config.data.synthetic_size, **data_kwargs
    )
    try:
        test: ImageData | None = load_dataset(config.data.name, "test", **data_kwargs)
    except (FileNotFoundError, ValueError):
        test = None  # e.g. an image folder without a test split: no kNN monitor
    native = train.image_shape[-1]
    crop = config.data.image_size or native
    small = config.model.small_images if config.model.small_images is not None else crop <= 64
    blur = config.augment.blur if config.augment.blur is not None else crop > 32
    augment = AugmentConfig(
        crop_size=crop,
        crop_scale=(config.augment.crop_min_scale, 1.0),
        color_strength=config.augment.color_strength,
        brightness_mode=config.augment.brightness_mode,
        blur=blur,
    )
    labeled = train.labels >= 0  # a user's folder: the unlabeled pool (-1) cannot vote in the kNN monitor
    knn_bank = train if bool(labeled.all()) else subset_data(train, labeled.nonzero().squeeze(1))
    loader = BatchLoader(
        train,
        batch_size=config.batch_size,
        device=device,
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        rank=distributed.get_rank(),
        world_size=distributed.get_world_size(),
        num_workers=config.data.num_workers,
        # streamed photos: two whole-image crops per image taken in the loader's workers (SPEC 5)
        crops=CropSpec(
            crop, views=2, scale=augment.crop_scale, ratio=augment.crop_ratio, flip_p=augment.flip_p
        ),
    )
    steps_per_epoch = len(loader)
    total_steps = max(1, round(steps_per_epoch * config.epochs))  # fractional epochs: a partial last epoch
    warmup_steps = round(config.optim.warmup_epochs * steps_per_epoch)
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"optim.warmup_epochs={config.optim.warmup_epochs} is not shorter than the run "
            f"(epochs={config.epochs:g}); set e.g. --set optim.warmup_epochs={config.epochs * 0.05:g} "
            "(5% of the epochs, as in the paper)."
        )
    assert config.optim.base_lr is not None  # validate() requires a value outside fine-tuning
    peak_lr = scale_learning_rate(config.optim.base_lr, config.batch_size, config.optim.lr_scaling)
    return PretrainSetup(
        config, device, precision, train, test, knn_bank, augment, small, loader, steps_per_epoch,
        total_steps, warmup_steps, peak_lr,
    )  # fmt: skip


def build_optimizer(module: nn.Module, config: PretrainConfig, lr: float) -> torch.optim.Optimizer:
    groups = param_groups(module, weight_decay=config.optim.weight_decay)
    if config.optim.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay)
    for group in groups:  # momentum SGD honours the same "no weight decay" decisions
        group["weight_decay"] = config.optim.weight_decay if group.get("weight_decay_enabled", True) else 0.0
    return torch.optim.SGD(groups, lr=lr, momentum=config.optim.momentum)


def pretrain(config: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) contrastive pretraining; returns the final metrics (also in ``results.json``).

    Under torchrun every rank runs this function: the process group comes from the environment, each rank
    trains on its shard of every global batch and augments its rows of one global draw (so N ranks see the
    same views as one process), every BatchNorm becomes global (SyncBatchNorm on CUDA, GlobalBatchNorm on
    CPU/gloo; SPEC 3), the kNN monitor's features are extracted in shards, and rank 0 alone writes.
    """
    distributed.init_from_env(device_type(config.device))
    setup = prepare(config)
    run_dir = Path(config.run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME
    if ckpt_path.exists() and not resume:
        raise FileExistsError(
            f"{ckpt_path} already exists: pass --resume to continue that run, or choose another run_dir "
            f"(--set run_dir=...). Nothing was overwritten."
        )
    if resume and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
    if distributed.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")

    seed_everything(config.seed)
    device = setup.device
    num_classes = len(setup.train.classes) if config.eval.online_probe and setup.train.classes else None
    module = PretrainModule(build_simclr_model(config, setup.small_images), num_classes).to(device)
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)
    module.model = distributed.convert_sync_batchnorm(module.model, device.type)  # type: ignore[assignment]
    optimizer = build_optimizer(module, config, setup.peak_lr)
    memory = build_memory(module.model, config)

    step = 0
    if resume:
        ckpt = load_checkpoint(ckpt_path, stage=STAGE)
        load_state_checked(module, ckpt["model"], ckpt_path)
        load_memory_state(memory, ckpt, ckpt_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])

    train_module: nn.Module = module
    if distributed.get_world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_module = nn.parallel.DistributedDataParallel(module, device_ids=ids)
    if config.compile:
        train_module = cast(nn.Module, torch.compile(train_module))  # checkpoints save unwrap(module)
    logger = MetricsLogger(run_dir)
    trainer = _Trainer(setup, train_module, optimizer, logger, memory)
    try:
        with trainer.interrupt:  # SIGTERM/SIGINT: finish the step, checkpoint, exit "resumable"
            results = trainer.run(start_step=step)
    finally:
        logger.close()
    write_json(run_dir / "results.json", results)
    distributed.barrier()  # last.pt and results.json exist for every rank's next stage
    return results


def build_memory(model: SimCLRModel, config: PretrainConfig) -> MomentumMemory | None:
    """The MoCo-style memory (``memory.size > 0``; see :mod:`simclrv2.engine.memory`), or None.

    Built from the model after its BatchNorms were converted (global BN under DDP) and before any resume, so
    the EMA encoder starts as a copy of the freshly initialised online network.
    """
    if config.memory.size == 0:
        return None
    return MomentumMemory(model, config.memory.size, model.head.out_dims[-1], config.memory.ema_decay)


def load_memory_state(memory: MomentumMemory | None, ckpt: dict[str, Any], path: Path) -> None:
    """Restore the EMA encoder and queue on resume; refuse a run whose memory setting changed."""
    saved = ckpt.get(MEMORY_KEY)
    if memory is None and saved:
        raise CheckpointError(
            f"{path} was pretrained with the memory (memory.size="
            f"{ckpt['config']['memory']['size']}): resume with the same --set memory.size"
        )
    if memory is not None:
        if not saved:
            raise CheckpointError(
                f"{path} was pretrained without the memory: resume with memory.size=0, or start a new run"
            )
        memory.load_state_dict(saved)


def contrastive_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    views: Tensor,
    labels: Tensor,
    temperature: float,
    device: torch.device,
    precision: str,
    channels_last: bool = True,
    memory: MomentumMemory | None = None,
) -> tuple[Tensor, Tensor | None]:
    """One pretraining step on this rank's views (``views``: view a of its N images, then view b): both views
    in one forward pass (BN statistics over both, as in the official code), NT-Xent with negatives from all
    ranks, the probe loss, backward, step.

    ``module`` is a :class:`PretrainModule`, DDP-wrapped under torchrun. With a ``memory`` the queue's keys
    are extra negatives, and after the step the EMA encoder is updated and enqueues this batch's keys.
    Returns the detached NT-Xent and probe losses (no host sync).
    """
    x = views.contiguous(memory_format=torch.channels_last) if channels_last else views
    with autocast(device, precision):
        outputs, logits = module(x)
    z = outputs[-1]
    n = views.shape[0] // 2
    if memory is None:
        loss = nt_xent(z[:n], z[n:], temperature)  # similarity/softmax in fp32 inside
    else:
        loss = nt_xent_with_memory(z[:n], z[n:], memory.negatives(), temperature)
    # nt_xent is the mean over the 2N anchors (the paper's Algorithm 1, the value we log). The official
    # code optimises the *sum* of the two directions (2x that); with LARS the loss scale is not absorbed
    # by the learning rate (it shifts the balance against weight decay), so we optimise the TF-scaled
    # loss and the paper's LR/weight-decay settings carry over unchanged (SPEC 3 and 4).
    total = 2.0 * loss
    probe_loss = None
    if logits is not None:
        probe_loss = F.cross_entropy(logits.float(), labels.repeat(2), ignore_index=-1)
        total = total + probe_loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if memory is not None:
        memory.update(cast(PretrainModule, unwrap(module)).model, x, device, precision)
    return loss.detach(), None if probe_loss is None else probe_loss.detach()


class _Trainer:
    def __init__(
        self,
        setup: PretrainSetup,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        logger: MetricsLogger,
        memory: MomentumMemory | None = None,
    ) -> None:
        self.s = setup
        self.memory = memory
        self.c = setup.config
        self.module = module
        self.optimizer = optimizer
        self.logger = logger
        self.run_dir = Path(self.c.run_dir)
        self.last_knn: dict[str, float] = {}
        self.last_probe: dict[str, float] = {}
        self.knn_step = -1
        self.last_loss = float("nan")
        self.interrupt = GracefulInterrupt()
        self.loss_window: Tensor | None = None  # the loop's running loss sum, checked before each save

    def save(self, step: int, name: str = CHECKPOINT_NAME) -> None:
        self._check_finite(step)  # on every rank (a collective), so all of them stop together
        if not distributed.is_main_process():
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "stage": STAGE,
            "config": to_dict(self.c),
            "small_images": self.s.small_images,
            "model": unwrap(self.module).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "epoch": step // self.s.steps_per_epoch,
            "rng": rng_state(),
            "knn": self.last_knn,
        }
        if self.memory is not None:
            state[MEMORY_KEY] = self.memory.state_dict()
        atomic_save(state, self.run_dir / name)

    def _check_finite(self, step: int) -> None:
        """Never overwrite the last good checkpoint with NaN/Inf weights: the loss is only synced every
        ``log_every_steps``, so check the unlogged window and the weights themselves before writing."""
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if self.loss_window is not None and not bool(
            torch.isfinite(distributed.reduce_mean(self.loss_window))
        ):
            raise nonfinite_error(STAGE, "loss became non-finite", step, self.lr, checkpoint)
        bad = nonfinite_parameters(unwrap(self.module))
        if bad:
            what = f"weights became non-finite ({len(bad)} tensors, e.g. {bad[0]})"
            raise nonfinite_error(STAGE, what, step, self.lr, checkpoint)

    def train_step(self, images: Tensor, labels: Tensor, step: int) -> tuple[Tensor, Tensor | None]:
        """Set the LR for ``step``, draw this rank's two views of its shard, and take one step."""
        s, c = self.s, self.c
        set_learning_rate(self.optimizer, warmup_cosine(step, s.total_steps, s.warmup_steps, s.peak_lr))
        gen = step_generator(s.device, c.seed, step)
        shard = (distributed.get_rank(), distributed.get_world_size())
        if s.loader.crops_in_loader:  # the two views arrive cropped and flipped: colour on the device
            views = distort_views(images, s.augment, gen, num_views=2, shard=shard)
            labels = labels[: len(labels) // 2]
        else:
            views = two_view_batch(images, s.augment, gen, shard=shard)  # this rank's rows of one global draw
        with explain_out_of_memory(STAGE, step, c.batch_size, s.device, self.run_dir / CHECKPOINT_NAME):
            return contrastive_step(
                self.module, self.optimizer, views, labels, c.temperature, s.device, s.precision,
                c.channels_last, self.memory,
            )  # fmt: skip

    def evaluate(self, step: int) -> None:
        """kNN top-1/top-5 on the test split (and the online probe's accuracy on the same features).

        Every rank extracts a share of the features (all ranks must call this); rank 0 classifies and logs.
        """
        s, c = self.s, self.c
        if s.test is None or len(s.knn_bank) == 0:
            return
        t0 = time.time()
        self.knn_step = step
        plain = cast(PretrainModule, unwrap(self.module))
        backbone = plain.model.backbone
        kwargs: dict[str, Any] = dict(
            device=s.device,
            precision=s.precision,
            batch_size=c.eval.batch_size,
            crop_size=s.augment.crop_size,
            channels_last=c.channels_last,
            distributed=True,
        )
        train_f, train_l = extract_features(
            backbone, s.knn_bank, limit=c.eval.knn_train_limit, desc="kNN bank", **kwargs
        )
        test_f, test_l = extract_features(backbone, s.test, desc="kNN test", **kwargs)
        if not distributed.is_main_process():
            return
        num_classes = len(s.test.classes)
        scores = knn_classify(
            train_f, train_l, test_f, num_classes, k=c.eval.knn_k, temperature=c.eval.knn_temperature
        )
        self.last_knn = topk_accuracy(scores, test_l)
        metrics = {"knn_top1": self.last_knn["top1"], "knn_top5": self.last_knn["top5"]}
        message = f"step {step}: kNN top-1 {self.last_knn['top1']:.2f}% top-5 {self.last_knn['top5']:.2f}%"
        classifier = plain.classifier
        if classifier is not None and classifier.out_features == num_classes:
            with torch.no_grad():
                probe = topk_accuracy(classifier(test_f).float(), test_l)
            self.last_probe = probe
            metrics["probe_top1"] = probe["top1"]
            message += f", online linear probe top-1 {probe['top1']:.2f}%"
        self.logger.log(step, **metrics, eval_seconds=time.time() - t0)
        echo(message)

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _log_window(
        self, step: int, epoch: int, loss_sum: Tensor, probe_sum: Tensor, steps: int, start: float
    ) -> float:
        """Log the mean loss of the last ``steps`` steps (the one host sync per period); stop on NaN/Inf."""
        mean_loss = distributed.reduce_mean(loss_sum).item() / steps  # the global batch's loss
        ips = steps * self.c.batch_size / max(time.time() - start, 1e-9)
        if not math.isfinite(mean_loss):
            ckpt = self.run_dir / CHECKPOINT_NAME
            raise FloatingPointError(
                f"loss became {mean_loss} at step {step} (lr {self.lr:.4g}); last good checkpoint: "
                f"{ckpt if ckpt.exists() else 'none'}. Try a lower optim.base_lr or precision=fp32."
            )
        metrics: dict[str, float] = {"loss": mean_loss, "lr": self.lr, "images_per_sec": ips, "epoch": epoch}
        if unwrap(self.module).classifier is not None:
            metrics["probe_loss"] = distributed.reduce_mean(probe_sum).item() / steps
        self.logger.log(step, **metrics)
        self.last_loss = mean_loss
        return ips

    def run(self, start_step: int) -> dict[str, Any]:
        s, c = self.s, self.c
        stop_at = s.total_steps if c.max_steps is None else min(s.total_steps, c.max_steps)
        step = start_step
        bar = progress(total=stop_at, initial=step, desc="pretrain", unit="step")
        loss_sum = torch.zeros((), device=s.device)
        probe_sum = torch.zeros((), device=s.device)
        self.loss_window = loss_sum
        window_steps, window_start = 0, time.time()
        train_time, train_images = 0.0, 0
        wall_start = time.time()
        self.module.train()
        while step < stop_at:
            epoch, start_batch = divmod(step, s.steps_per_epoch)
            for images, labels in s.loader.epoch(epoch, start_batch=start_batch):
                loss, probe = self.train_step(images, labels, step)
                loss_sum += loss
                if probe is not None:
                    probe_sum += probe
                step += 1
                window_steps += 1
                bar.update(1)
                if step % c.log_every_steps == 0 or step == stop_at:
                    ips = self._log_window(step, epoch, loss_sum, probe_sum, window_steps, window_start)
                    train_time += time.time() - window_start
                    train_images += window_steps * c.batch_size
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{self.lr:.3g}", img_s=f"{ips:.0f}")
                    loss_sum.zero_()
                    probe_sum.zero_()
                    window_steps, window_start = 0, time.time()
                if c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0:
                    self.save(step)
                self.interrupt.stop_if_requested(
                    STAGE, step, stop_at, self.save, self.run_dir / CHECKPOINT_NAME, s.device,
                    sync_now=s.device.type != "cuda" or step % c.log_every_steps == 0 or step == stop_at,
                )  # fmt: skip
                if step == stop_at:
                    break
            epoch_done = step % s.steps_per_epoch == 0
            if epoch_done:
                finished_epoch = step // s.steps_per_epoch
                every = c.eval.knn_every_epochs
                keep = finished_epoch in c.keep_epochs
                if (every and finished_epoch % every == 0) or keep or step == s.total_steps:
                    t_eval = time.time()
                    self.evaluate(step)
                    window_start += time.time() - t_eval  # evaluation time is not training throughput
            self.save(step)
            if epoch_done and step // s.steps_per_epoch in c.keep_epochs:
                self.save(step, name=f"epoch{step // s.steps_per_epoch:04d}.pt")
        bar.close()
        if self.knn_step != step and s.test is not None:
            self.evaluate(step)
            self.save(step)
        return {
            "stage": STAGE,
            "step": step,
            "total_steps": s.total_steps,
            "knn": self.last_knn,
            "online_probe": self.last_probe,
            "images_per_sec": train_images / train_time if train_time else None,
            "wall_seconds": time.time() - wall_start,
            "precision": s.precision,
            "device": str(s.device),
            "checkpoint": str(self.run_dir / CHECKPOINT_NAME),
        }
