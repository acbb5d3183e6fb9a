"""The shared train loop of the classification-like stages: fine-tuning, supervised baseline, distillation.

One :class:`ClassifierTrainer` owns what those stages have in common: crop + flip augmentation drawn from a
per-step generator (SPEC 5: crop and flip only; resume is exact because augmentation is a pure function of the
step), warmup + cosine LR per step, LARS or momentum SGD over :func:`param_groups` (the classifier excluded
from LARS and weight decay), progress bar, metrics, one host sync per log period, NaN stop, an atomic
checkpoint per epoch, exact ``--resume``, and the final test evaluation (top-1/top-5/per-class accuracy,
``eval.json``, ``predictions.json``, ``results.json``).

The loss is pluggable: pass ``loss_fn(model, images, labels, step) -> scalar`` (e.g. distillation against a
frozen teacher on the same augmented images), or subclass and override :meth:`ClassifierTrainer.loss`.
The default is cross-entropy on ``model(images)``. ``loss_fn`` runs under the stage's autocast: cast logits
with ``.float()`` before softmax/log-softmax. ``labels`` may be -1 for unlabeled images (custom losses only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from simclrv2.config import ConfigError, save_config
from simclrv2.data import BatchLoader, CropSpec, ImageData, crop_flip, to_float_rgb
from simclrv2.engine.evaluate import extract_features, topk_accuracy
from simclrv2.engine.runtime import (
    GracefulInterrupt,
    MetricsLogger,
    autocast,
    echo,
    explain_out_of_memory,
    nonfinite_error,
    nonfinite_parameters,
    progress,
    step_generator,
    write_json,
)
from simclrv2.optim import LARS, param_groups, scale_learning_rate, set_learning_rate, warmup_cosine

__all__ = [
    "CHECKPOINT_NAME",
    "ClassifierTrainer",
    "LossFn",
    "TrainSettings",
    "auto_batch_size",
    "check_run_dir",
    "classification_metrics",
    "evaluate_classifier",
    "fit_batch_size",
    "make_optimizer",
    "predict_logits",
    "train_steps",
    "write_predictions",
]

CHECKPOINT_NAME = "last.pt"

LossFn = Callable[[nn.Module, Tensor, Tensor, int], Tensor]
"""``(model, augmented float images, labels, step) -> scalar loss``."""


@dataclass
class TrainSettings:
    """Everything the loop needs, resolved by the stage (so errors surface before work)."""

    stage: str
    run_dir: Path
    seed: int
    device: torch.device
    precision: str
    batch_size: int
    epochs: float
    peak_lr: float
    optimizer: str = "lars"
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    max_steps: int | None = None
    crop_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)
    channels_last: bool = True
    log_every_steps: int = 20
    checkpoint_every_steps: int = 0
    """Also checkpoint every N steps inside an epoch (0 = at the end of each epoch only)."""
    eval_batch_size: int = 512
    config: Any = None
    """The stage's config dataclass: saved as config.yaml and into every checkpoint."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Stored in every checkpoint (e.g. the architecture, so a later stage can rebuild the model)."""
    write_config: bool = True
    show_progress: bool = True
    freeze_bn: bool = False
    """BatchNorms in eval mode while training (running statistics kept; their γ and β still train)."""
    eval_name: str = "test"
    """What the evaluation set is, for the log line ("validation" for a hyper-parameter search's runs)."""

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        stage: str,
        train: ImageData,
        device: torch.device,
        precision: str,
        batch_size: int,
        epochs: float,
        peak_lr: float,
        extra: dict[str, Any],
        show_progress: bool = True,
        run_dir: Path | None = None,
        eval_name: str = "test",
    ) -> TrainSettings:
        """Settings from a stage config with the common keys (Finetune-, Supervised-, DistillConfig);
        the arguments are what the stage resolved itself."""
        return cls(
            stage=stage,
            run_dir=Path(config.run_dir) if run_dir is None else run_dir,
            seed=config.seed,
            device=device,
            precision=precision,
            batch_size=batch_size,
            epochs=epochs,
            peak_lr=peak_lr,
            optimizer=config.optim.optimizer,
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
            warmup_epochs=config.optim.warmup_epochs,
            max_steps=config.max_steps,
            crop_size=config.data.image_size or train.image_shape[-1],
            crop_scale=(config.crop_min_scale, 1.0),
            channels_last=config.channels_last,
            log_every_steps=config.log_every_steps,
            checkpoint_every_steps=getattr(config, "checkpoint_every_steps", 0),
            eval_batch_size=config.eval_batch_size,
            freeze_bn=getattr(config, "freeze_bn", False),
            config=config,
            extra=extra,
            show_progress=show_progress,
            eval_name=eval_name,
        )


def train_and_evaluate(
    config: Any,
    stage: str,
    model: nn.Module,
    run_dir: Path,
    train: ImageData,
    evaluate_on: ImageData | None,
    lr_multiplier: float,
    epochs: int,
    device: torch.device,
    precision: str,
    resume: bool,
    show_progress: bool,
    extra: dict[str, Any],
    eval_name: str = "test",
) -> dict[str, Any]:
    """One classifier run of a stage config (fine-tuning, supervised): ``model`` to the device (channels-last
    if asked), the batch fitted to ``train``, the config's scaled LR times ``lr_multiplier``, then
    :meth:`ClassifierTrainer.run`. A validation search calls it per candidate (``eval_name="validation"``)."""
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch = fit_batch_size(config.batch_size, len(train), stage)
    peak_lr = lr_multiplier * scale_learning_rate(config.optim.base_lr, batch, config.optim.lr_scaling)
    settings = TrainSettings.from_config(
        config,
        stage=stage,
        run_dir=run_dir,
        train=train,
        device=device,
        precision=precision,
        batch_size=batch,
        epochs=epochs,
        peak_lr=peak_lr,
        extra={"lr_multiplier": lr_multiplier, "num_labeled": len(train), **extra},
        show_progress=show_progress,
        eval_name=eval_name,
    )
    trainer = ClassifierTrainer(settings, model, train, evaluate_on)
    return trainer.run(resume, extra_results={"lr_multiplier": lr_multiplier, "num_train": len(train)})


def make_optimizer(
    model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """LARS (SPEC 4) or momentum SGD over :func:`param_groups` (BN, biases and classifier: no LARS, no wd)."""
    groups = param_groups(model, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name != "sgd":
        raise ValueError(f"unknown optimizer {name!r}; expected lars or sgd")
    for group in groups:
        group["weight_decay"] = weight_decay if group.get("weight_decay_enabled", True) else 0.0
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def train_steps(num_images: int, epochs: float, batch_size: int) -> int:
    """The official step count (``num_examples * train_epochs // train_batch_size + 1``, TF ``run.py``): the
    labeled set is repeated and cut into batches that run across epoch ends, so every image is seen
    ``epochs`` times (give or take the one batch that the ``+ 1`` adds)."""
    return int(num_images * epochs) // batch_size + 1


# The automatic batch for small labeled sets: about this many steps per epoch (the paper's 1% ImageNet run:
# 12,811 images at batch 1024 = 12.5), never below MIN_AUTO_BATCH images, never above DEFAULT_BATCH.
AUTO_STEPS_PER_EPOCH = 12
MIN_AUTO_BATCH = 16
DEFAULT_BATCH = 256


def auto_batch_size(num_images: int) -> int:
    """The batch when none is set: :data:`DEFAULT_BATCH`, or for small labeled sets the power of two nearest
    below ``num_images / AUTO_STEPS_PER_EPOCH`` (at least :data:`MIN_AUTO_BATCH`): e.g. 100 images -> 16,
    600 -> 32, 6,000 -> 256."""
    target = max(num_images // AUTO_STEPS_PER_EPOCH, 1)
    return min(DEFAULT_BATCH, max(MIN_AUTO_BATCH, 1 << (target.bit_length() - 1)))


def fit_batch_size(requested: int | None, num_images: int, stage: str) -> int:
    """The global batch for ``num_images`` training images: ``requested`` (None = :func:`auto_batch_size`),
    capped at the number of images and rounded down to a multiple of the world size (each rank gets an equal
    share)."""
    world = distributed.get_world_size()
    if requested is None:
        requested = auto_batch_size(num_images)
        echo(f"{stage}: batch_size {requested} for {num_images} training images (about "
             f"{num_images / requested:.1f} steps per epoch; set batch_size to choose)")  # fmt: skip
    batch = min(requested, num_images) // world * world
    if batch == 0:
        raise ConfigError(
            f"{stage}: {num_images} training images cannot be split over {world} processes; "
            "use more labels or fewer processes"
        )
    if batch < requested:
        echo(f"{stage}: batch_size {requested} -> {batch} ({num_images} images, {world} process(es))")
    return batch


def check_run_dir(run_dir: str | Path, resume: bool) -> None:
    """Refuse to start over an existing run (before any work or file is written)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise FileExistsError(
            f"{path} already exists: pass --resume to continue that run, or choose another run_dir "
            "(--set run_dir=...). Nothing was overwritten."
        )
    if resume and not path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}; start without --resume")


# --- evaluation -----------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    data: ImageData,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 512,
    crop_size: int | None = None,
    channels_last: bool = True,
    desc: str = "predict",
    show_progress: bool = True,
    distributed: bool = False,
) -> tuple[Tensor, Tensor]:
    """(float32 logits (N, C), labels (N,)) of ``data`` in dataset order, model in eval mode, centre crop.
    ``distributed``: every rank runs a share and gets all rows (see :func:`extract_features`)."""
    logits, labels = extract_features(
        model,
        data,
        device,
        precision,
        batch_size,
        crop_size,
        channels_last,
        desc=desc,
        show_progress=show_progress,
        distributed=distributed,
    )
    return logits.cpu(), labels.cpu()


def classification_metrics(
    logits: Tensor, labels: Tensor, classes: list[str] | None = None
) -> dict[str, Any]:
    """Top-1/top-5 (percent), per-class accuracy (percent, by class name) and the count."""
    metrics: dict[str, Any] = dict(topk_accuracy(logits, labels))
    pred = logits.argmax(dim=1)
    num_classes = logits.shape[1]
    names = classes if classes and len(classes) == num_classes else [str(i) for i in range(num_classes)]
    per_class = {}
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            per_class[names[c]] = 100.0 * (pred[mask] == c).double().mean().item()
    metrics["per_class"] = per_class
    metrics["num_images"] = len(labels)
    return metrics


def evaluate_classifier(
    model: nn.Module,
    data: ImageData,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 512,
    crop_size: int | None = None,
    channels_last: bool = True,
) -> dict[str, Any]:
    """Top-1, top-5 and per-class accuracy (percent) of ``model`` on ``data`` (eval mode, centre crop)."""
    logits, labels = predict_logits(model, data, device, precision, batch_size, crop_size, channels_last)
    return classification_metrics(logits, labels, data.classes)


def write_predictions(path: Path, logits: Tensor, labels: Tensor, classes: list[str]) -> None:
    """``predictions.json``: predicted and true label and the predicted probability of every test image,
    in dataset order (for confusion matrices and sample grids). Main process only."""
    prob = logits.softmax(dim=1)
    conf, pred = prob.max(dim=1)
    payload = {
        "classes": classes,
        "label": labels.tolist(),
        "pred": pred.tolist(),
        "prob": [round(v, 4) for v in conf.tolist()],
    }
    write_json(path, payload, indent=None)


# --- the trainer ----------------------------------------------------------------------------------------


class ClassifierTrainer:
    """Train ``model`` on ``train`` (labels may be unused by a custom loss), then evaluate on ``test``.

    ``run()`` refuses to overwrite an existing ``run_dir/last.pt`` unless ``resume`` is True, and resumes
    exactly (model, optimiser, RNG, the step; the data order and augmentation are functions of the step).

    Under torchrun (world size > 1): BatchNorms of ``model`` become global (SyncBatchNorm / GlobalBatchNorm),
    the model is trained through DDP (a custom ``loss_fn`` receives the DDP wrapper, so only the trained model
    is wrapped: a distillation teacher stays a plain module), each rank loads its shard of every global batch
    and augments its rows of one global draw (the same images and views as one process), evaluation is
    sharded and gathered in dataset order, and rank 0 alone writes files. The model passed in (and
    ``self.model``) stays the plain module: checkpoints have no ``module.`` prefix.
    """

    def __init__(
        self,
        settings: TrainSettings,
        model: nn.Module,
        train: ImageData,
        test: ImageData | None,
        loss_fn: LossFn | None = None,
    ) -> None:
        self.s = settings
        self.model = model
        self.train = train
        self.test = test
        self.loss_fn = loss_fn
        self.run_dir = Path(settings.run_dir)
        self.rank, self.world_size = distributed.get_rank(), distributed.get_world_size()
        self.model = distributed.convert_sync_batchnorm(model, settings.device.type)
        self.train_model: nn.Module = self.model
        if self.world_size > 1:
            ids = [settings.device.index] if settings.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loader = BatchLoader(
            train,
            batch_size=settings.batch_size,
            device=settings.device,
            shuffle=True,
            seed=settings.seed,
            rank=self.rank,
            world_size=self.world_size,
            stream=True,
            crops=CropSpec(settings.crop_size, views=1, scale=settings.crop_scale),  # streamed photos
        )
        self.num_train = len(train)
        self.steps_per_epoch = self.num_train / settings.batch_size  # batches run across epoch ends
        self.total_steps = train_steps(self.num_train, settings.epochs, settings.batch_size)
        self.warmup_steps = round(settings.warmup_epochs * self.steps_per_epoch)
        if self.warmup_steps >= self.total_steps:
            raise ConfigError(
                f"optim.warmup_epochs={settings.warmup_epochs} is not shorter than the run "
                f"(epochs={settings.epochs}); lower it (fine-tuning uses 0)."
            )
        self.optimizer = make_optimizer(
            self.model, settings.optimizer, settings.peak_lr, settings.momentum, settings.weight_decay
        )
        self.last_loss = float("nan")
        self.interrupt = GracefulInterrupt()
        self.loss_window: Tensor | None = None  # fit's running loss sum, checked before each save

    # -- pieces a subclass may override ------------------------------------------------------------------

    def loss(self, images: Tensor, labels: Tensor, step: int) -> Tensor:
        """Scalar training loss on one augmented batch; cross-entropy unless a ``loss_fn`` was given."""
        with autocast(self.s.device, self.s.precision):
            if self.loss_fn is not None:
                return self.loss_fn(self.train_model, images, labels, step)
            logits = self.train_model(images)
        return F.cross_entropy(logits.float(), labels)

    def augment(self, images: Tensor, step: int) -> Tensor:
        if self.loader.crops_in_loader:  # streamed photos: cropped and flipped by the loader's workers
            x = to_float_rgb(images)
        else:
            gen = step_generator(self.s.device, self.s.seed, step)
            shard = (self.rank, self.world_size)
            x = crop_flip(images, self.s.crop_size, gen, crop_scale=self.s.crop_scale, shard=shard)
        if self.s.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # -- checkpoints -------------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT_NAME

    def save(self, step: int) -> None:
        """The checkpoint (rank 0 only; the plain model's weights, no ``module.`` prefix)."""
        from simclrv2.config import to_dict

        self._check_finite(step)  # on every rank (a collective), so all of them stop together
        if not distributed.is_main_process():
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "stage": self.s.stage,
            "config": to_dict(self.s.config) if self.s.config is not None else {},
            **self.s.extra,
            # for simclrv2.load_classifier: class names, model input side, side of the dataset's images
            "classes": list(self.train.classes),
            "image_size": self.s.crop_size,
            "load_size": min(self.train.image_shape[-2:]),  # the shorter side (non-square in-memory data)
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "epoch": self.epoch_of(step),
            "total_steps": self.total_steps,
            "rng": rng_state(),
        }
        atomic_save(state, self.checkpoint_path)

    def _check_finite(self, step: int) -> None:
        """Never overwrite the last good checkpoint with NaN/Inf weights (the loss is only synced every
        ``log_every_steps``): check the unlogged loss window and the weights before writing."""
        if self.loss_window is not None and not bool(
            torch.isfinite(distributed.reduce_mean(self.loss_window))
        ):
            raise nonfinite_error(self.s.stage, "loss became non-finite", step, self.lr, self.checkpoint_path)
        bad = nonfinite_parameters(unwrap(self.model))
        if bad:
            what = f"weights became non-finite ({len(bad)} tensors, e.g. {bad[0]})"
            raise nonfinite_error(self.s.stage, what, step, self.lr, self.checkpoint_path)

    def _start(self, resume: bool) -> int:
        path = self.checkpoint_path
        check_run_dir(self.run_dir, resume)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.s.config is not None and self.s.write_config and distributed.is_main_process():
            save_config(self.s.config, self.run_dir / "config.yaml")
        if not resume:
            return 0
        ckpt = load_checkpoint(path, stage=self.s.stage)
        if ckpt.get("total_steps", self.total_steps) != self.total_steps:
            raise CheckpointError(
                f"{path} was a run of {ckpt['total_steps']} steps, this config gives {self.total_steps}: "
                "resume with the same epochs, batch size and labels"
            )
        load_state_checked(unwrap(self.model), ckpt["model"], path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        return int(ckpt["step"])

    # -- the loop ----------------------------------------------------------------------------------------

    def epoch_of(self, step: int) -> int:
        """Epochs of the stream completed after ``step`` steps."""
        return step * self.s.batch_size // self.num_train

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self, images: Tensor, labels: Tensor, step: int) -> Tensor:
        lr = warmup_cosine(step, self.total_steps, self.warmup_steps, self.s.peak_lr)
        set_learning_rate(self.optimizer, lr)
        with explain_out_of_memory(
            self.s.stage, step, self.s.batch_size, self.s.device, self.checkpoint_path
        ):
            loss = self.loss(self.augment(images, step), labels, step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def _log(
        self, logger: MetricsLogger, step: int, epoch: int, loss_sum: Tensor, n: int, t0: float
    ) -> float:
        # the one host-device sync per log period; the mean over ranks is the global batch's loss, and every
        # rank sees the same value, so all of them stop together on NaN
        mean = distributed.reduce_mean(loss_sum).item() / n
        ips = n * self.s.batch_size / max(time.time() - t0, 1e-9)
        if not math.isfinite(mean):
            raise FloatingPointError(
                f"{self.s.stage}: loss became {mean} at step {step} (lr {self.lr:.4g}); "
                f"last good checkpoint: {self.checkpoint_path if self.checkpoint_path.exists() else 'none'}. "
                "Try a lower optim.base_lr or precision=fp32."
            )
        logger.log(step, loss=mean, lr=self.lr, images_per_sec=ips, epoch=epoch)
        self.last_loss = mean
        return ips

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end (or ``max_steps``); returns training stats. Checkpoints at every epoch end of the
        stream and at the end."""
        s = self.s
        step = self._start(resume)
        stop_at = self.total_steps if s.max_steps is None else min(self.total_steps, s.max_steps)
        logger = MetricsLogger(self.run_dir)
        bar = progress(total=stop_at, initial=step, desc=s.stage, unit="step", disable=not s.show_progress)
        loss_sum = torch.zeros((), device=s.device)
        self.loss_window = loss_sum
        window, t0 = 0, time.time()
        train_time, train_images = 0.0, 0
        wall = time.time()
        self.train_model.train()
        if s.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        self.interrupt.install()  # SIGTERM/SIGINT: finish the step, checkpoint, exit "resumable"
        try:
            for images, labels in self.loader.steps(step, stop_at - step):
                loss_sum += self.train_step(images, labels, step)
                step += 1
                window += 1
                bar.update(1)
                epoch_end = self.epoch_of(step) > self.epoch_of(step - 1)
                if step % s.log_every_steps == 0 or step == stop_at:
                    ips = self._log(logger, step, self.epoch_of(step - 1), loss_sum, window, t0)
                    train_time += time.time() - t0
                    train_images += window * s.batch_size
                    bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{self.lr:.3g}", img_s=f"{ips:.0f}")
                    loss_sum.zero_()
                    window, t0 = 0, time.time()
                if (
                    epoch_end
                    or step == stop_at
                    or (s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0)
                ):
                    self.save(step)
                self.interrupt.stop_if_requested(
                    s.stage, step, stop_at, self.save, self.checkpoint_path, s.device,
                    sync_now=s.device.type != "cuda" or step % s.log_every_steps == 0 or step == stop_at,
                )  # fmt: skip
        finally:
            self.interrupt.restore()
            bar.close()
            logger.close()
        return {
            "step": step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "final_loss": self.last_loss,
            "images_per_sec": train_images / train_time if train_time else None,
            "train_seconds": time.time() - wall,
        }

    def evaluate(self, write: bool = True) -> dict[str, Any]:
        """Top-1/top-5/per-class on the test split; writes eval.json and predictions.json."""
        if self.test is None:
            return {}
        s = self.s
        logits, labels = predict_logits(
            self.model, self.test, s.device, s.precision, s.eval_batch_size, s.crop_size, s.channels_last,
            show_progress=s.show_progress, distributed=True,
        )  # fmt: skip
        metrics = classification_metrics(logits, labels, self.test.classes)
        if write:
            write_json(self.run_dir / "eval.json", metrics)
            write_predictions(self.run_dir / "predictions.json", logits, labels, self.test.classes)
        return metrics

    def run(self, resume: bool = False, extra_results: dict[str, Any] | None = None) -> dict[str, Any]:
        """``fit`` then ``evaluate``; writes ``results.json`` and returns it."""
        stats = self.fit(resume)
        metrics = self.evaluate()
        results = {
            "stage": self.s.stage,
            **(extra_results or {}),
            **stats,
            "test": {k: v for k, v in metrics.items() if k != "per_class"},
            "evaluated_on": self.test.eval_name if self.test is not None else None,
            "precision": self.s.precision,
            "device": str(self.s.device),
            "batch_size": self.s.batch_size,
            "epochs": self.s.epochs,
            "peak_lr": self.s.peak_lr,
            "checkpoint": str(self.checkpoint_path),
        }
        if metrics:
            top = f"top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%"
            name = (
                self.s.eval_name if self.s.eval_name != "test" or self.test is None else self.test.eval_name
            )
            echo(f"{self.s.stage}: {name} {top}")
        write_json(self.run_dir / "results.json", results)
        distributed.barrier()  # the checkpoint and results exist for every rank's next stage
        return results
