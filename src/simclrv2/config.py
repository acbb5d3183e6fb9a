"""Configuration: one dataclass per stage, YAML in, ``--set key=value`` overrides, validated up front.

Config is data (STYLE.md lesson 8): a stage receives a fully resolved, validated dataclass; the resolved
config is written next to the results (``config.yaml``) and into every checkpoint. Unknown keys, wrong types
and out-of-range values are rejected *before* any work starts, with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message names the key and the fix."""


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    """Dataset name: fashion-mnist, cifar10, cifar100, stl10, imagefolder, folder (a user's own labeled +
    unlabeled images: ``simclrv2 pipeline --data``), synthetic."""
    root: str = "./data"
    """Where datasets live (Fashion-MNIST is also found in /usr/share/datasets/fashion-mnist)."""
    download: bool = False
    """Download the dataset into ``root`` when it is missing (needs the network)."""
    train_split: str = "train"
    """Split used for pretraining (labels unused), e.g. ``train+unlabeled`` for STL-10."""
    image_size: int | None = None
    """Side of the training crop; None = the dataset's native size (28 Fashion-MNIST, 32 CIFAR, 96 STL-10)."""
    load_size: int | None = None
    """imagefolder only: images are decoded, resized and centre-cropped to this side before augmentation."""
    num_workers: int = 2
    """DataLoader workers for streamed datasets (in-memory datasets use none)."""
    synthetic_size: int | None = None
    """synthetic only: number of training images."""
    bad_images: str = "fail"
    """imagefolder and folder: unreadable or corrupt image files stop the run before work (``fail``, listing
    them) or are left out with a warning that counts them (``skip``)."""
    cache_gb: float = 4.0
    """folder: a split that decodes to at most this many GiB is decoded once and held in memory as uint8
    (later epochs decode nothing); larger ones stream from the files. 0 = always stream."""
    validation_fraction: float = 0.2
    """folder without a test set: the class-balanced fraction of the labeled images held out (never trained
    on) to evaluate on, reported as "validation"."""


@dataclass
class ModelConfig:
    backbone: str = "r18_1x_sk0"
    """``r{depth}_{width}x_sk{0|1}``, e.g. r50_1x_sk0, r152_3x_sk1, r18_0.5x_sk0 (SPEC section 1)."""
    small_images: bool | None = None
    """3x3 stride-1 stem, no max-pool (CIFAR-size images). None = on when the crop is <= 64 px."""
    head_layers: int = 3
    """Projection head depth (SPEC section 2; SimCLRv2 uses 3)."""
    head_dim: int = 128
    """Projection output dimension."""
    tf_same_pool: bool = False
    """The stem max-pool pads like TensorFlow's "SAME" (extra cell bottom/right) instead of PyTorch's both
    sides: what the official checkpoints compute. Set by ``simclrv2 convert``; no effect on the weights."""
    grad_checkpoint: bool = False
    """Activation checkpointing per residual block: far less activation memory for one more forward pass
    (about +30% step time; benchmarks/README.md). For big models or batches that do not fit otherwise."""


@dataclass
class AugmentSettings:
    color_strength: float = 0.5
    """Colour distortion strength s (SPEC 5: 1.0 ImageNet, 0.5 CIFAR-size)."""
    brightness_mode: str = "v2"
    """v2 multiplies brightness (SimCLRv2), v1 adds."""
    blur: bool | None = None
    """Gaussian blur; None = on for crops larger than 32 px (SPEC 5)."""
    crop_min_scale: float = 0.08
    """Lower bound of the random-resized-crop area fraction."""


@dataclass
class OptimConfig:
    optimizer: str = "lars"
    """lars (SPEC 4) or sgd (momentum SGD, same groups)."""
    base_lr: float | None = 0.1
    """Learning rate before scaling; peak LR = scale(base_lr, batch_size). Fine-tuning's default is None: the
    SPEC 4 rule by architecture (0.005 for ResNets up to 1x wide without SK, 0.002 for wider or SK nets)."""
    lr_scaling: str = "sqrt"
    """sqrt (base * sqrt(B), SimCLRv2), linear (base * B / 256) or none."""
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 5.0
    """Linear warmup length in epochs (may be fractional); then cosine decay to zero. Pretraining's 5 is the
    paper's 5% of the default 100 epochs (SPEC 4; set 40 for 800)."""


@dataclass
class EvalConfig:
    knn_every_epochs: int = 1
    """Run the kNN monitor every N epochs (and always at the end); 0 = only at the end."""
    knn_k: int = 200
    knn_temperature: float = 0.1
    knn_train_limit: int | None = None
    """Use at most this many training images as the kNN memory bank (None = all)."""
    online_probe: bool = True
    """Train a linear classifier on stop-gradient features during pretraining (TF2 does this)."""
    batch_size: int = 512
    """Batch size for feature extraction."""


@dataclass
class MemoryConfig:
    """The paper's optional MoCo-style memory (SPEC 3): extra negatives from an EMA encoder's queue."""

    size: int = 0
    """Queue length in keys (0 = off; the paper: 65536). Each step enqueues 2 x batch_size keys (both views);
    any size works (the ring buffer wraps mid-batch; a size below 2 x batch_size keeps the newest keys)."""
    ema_decay: float = 0.999
    """d in ema = d * ema + (1 - d) * online, applied after every optimiser step (the paper: 0.999)."""


@dataclass
class PretrainConfig:
    """Stage 1: contrastive pretraining (SPEC sections 1-5)."""

    run_dir: str = "runs/pretrain"
    seed: int = 0
    epochs: float = 100
    """Passes over the training images; fractions are allowed (``1.5``: the run stops, with its LR schedule
    finished, after ``round(1.5 * steps_per_epoch)`` steps; the last epoch is then a partial one)."""
    batch_size: int = 512
    """Global batch size (both views of each image count once)."""
    temperature: float = 0.5
    """NT-Xent temperature (0.1 ImageNet, 0.5 CIFAR-size; SPEC 3)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (smoke tests); the LR schedule still spans ``epochs``."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:N."""
    precision: str = "auto"
    """auto (bf16 where the hardware runs it fast), bf16 or fp32."""
    channels_last: bool = True
    compile: bool = False
    """torch.compile the model for training. Off by default: on the 2-core CPU it made the demo model's step
    24% slower and ResNet-18's 9% faster, after a 1-2 minute compile (benchmarks/README.md, "Levers")."""
    log_every_steps: int = 20
    """Loss/LR/throughput logging period; the only host-device sync in the step loop."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every N steps (0 = only at the end of each epoch)."""
    keep_epochs: list[int] = field(default_factory=list)
    """Also keep a copy of the checkpoint after these epochs (``epoch0005.pt``; kNN is evaluated there too),
    e.g. to fine-tune from several points of one run (benchmarks/label_efficiency.py's curve)."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def validate(self) -> None:
        _check_choice("data.name", self.data.name, DATASET_NAMES)
        _check_choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        _check_choice("precision", self.precision, ("auto", "bf16", "fp32"))
        _check_nonnegative("memory.size", self.memory.size)
        _check_range("memory.ema_decay", self.memory.ema_decay, 0.0, 1.0, hi_open=True)
        _check_choice("optim.optimizer", self.optim.optimizer, ("lars", "sgd"))
        _check_choice("optim.lr_scaling", self.optim.lr_scaling, ("sqrt", "linear", "none"))
        _check_choice("augment.brightness_mode", self.augment.brightness_mode, ("v1", "v2"))
        _check_positive("epochs", self.epochs)
        _check_positive("batch_size", self.batch_size)
        if self.batch_size < 2:
            raise ConfigError("batch_size must be >= 2: NT-Xent needs negatives. Set --set batch_size=256.")
        _check_positive("temperature", self.temperature)
        _check_positive("optim.base_lr", self.optim.base_lr)
        _check_nonnegative("optim.weight_decay", self.optim.weight_decay)
        _check_range("optim.momentum", self.optim.momentum, 0.0, 1.0, hi_open=True)
        _check_nonnegative("optim.warmup_epochs", self.optim.warmup_epochs)
        _check_nonnegative("augment.color_strength", self.augment.color_strength)
        _check_range("augment.crop_min_scale", self.augment.crop_min_scale, 0.0, 1.0, lo_open=True)
        _check_positive("log_every_steps", self.log_every_steps)
        _check_nonnegative("checkpoint_every_steps", self.checkpoint_every_steps)
        _check_nonnegative("eval.knn_every_epochs", self.eval.knn_every_epochs)
        for e in self.keep_epochs:
            if not 1 <= e <= self.epochs:
                raise ConfigError(
                    f"keep_epochs: {e} is not an epoch of this run (1 ... epochs={self.epochs:g}); "
                    "drop it or raise epochs."
                )
        _check_positive("eval.knn_k", self.eval.knn_k)
        _check_positive("eval.knn_temperature", self.eval.knn_temperature)
        _check_positive("eval.batch_size", self.eval.batch_size)
        _check_nonnegative("model.head_layers", self.model.head_layers)
        _check_positive("model.head_dim", self.model.head_dim)
        _check_nonnegative("data.num_workers", self.data.num_workers)
        _check_data(self.data)
        for key in ("max_steps", "data.image_size", "data.load_size", "eval.knn_train_limit"):
            value = get_key(self, key)
            if value is not None:
                _check_positive(key, value)
        from simclrv2.models.registry import parse_backbone_name

        try:
            parse_backbone_name(self.model.backbone)
        except ValueError as err:
            raise ConfigError(f"model.backbone: {err}") from None


def _finetune_optim() -> OptimConfig:
    # SPEC 4: LARS, 0.005 * sqrt(B) for R50 1x, 0.002 * sqrt(B) for wider/SK nets (base_lr None: the rule,
    # engine.finetune.finetune_base_lr), no wd, no warmup.
    return OptimConfig(optimizer="lars", base_lr=None, lr_scaling="sqrt", weight_decay=0.0, warmup_epochs=0.0)


def _supervised_optim() -> OptimConfig:
    # SPEC 4: supervised baseline, SGD momentum 0.9, LR 0.1 * B / 256, wd 1e-4, cosine.
    return OptimConfig(
        optimizer="sgd", base_lr=0.1, lr_scaling="linear", weight_decay=1e-4, warmup_epochs=0.0
    )


@dataclass
class FinetuneConfig:
    """Stage 2: fine-tune the pretrained network from head layer k on a labeled subset (SPEC 2, 4)."""

    run_dir: str = "runs/finetune"
    seed: int = 0
    pretrained: str = ""
    """Pretraining checkpoint (``last.pt`` of a pretrain run); backbone and head come from its config."""
    labels: str = "10%"
    """Labeled subset: 1%, 10%, 100%, N/class, or a subset file (one image file name per line)."""
    label_index_file: str | None = None
    """Where the chosen indices live (default run_dir/label_indices.txt); loaded if it exists, so several
    stages can share one subset."""
    from_layer: int | None = None
    """Fine-tune from head layer k: 0 = h (drop the head), 1 = SimCLRv2's choice for 1%/10%, -1 = z (SPEC 2).
    None = the paper's rule: 1 below 100% labels, 0 at 100% (SPEC 4)."""
    lr_grid: list[float] = field(default_factory=lambda: [1.0])
    """Multipliers of the scaled base LR; with more than one (LR, epochs) candidate each is tried on a
    validation split of the labeled subset and the best is retrained on all of it (as the supervised
    baseline does). Default: the paper's LR, no search."""
    epochs_grid: list[int] = field(default_factory=list)
    """Epoch counts tried with every LR of ``lr_grid`` (empty = ``epochs`` only)."""
    val_fraction: float = 0.1
    """Class-balanced part of the labeled subset held out when there is something to choose."""
    use_ema: bool = False
    """Start from the EMA encoder of a run pretrained with ``memory.size > 0`` instead of the online one."""
    freeze_bn: bool = False
    """Keep every BatchNorm in eval mode (the pretraining's running statistics; γ and β still train) instead
    of the paper's train mode: an option for very small labeled sets (benchmarks/finetune_ablation.py)."""
    warm_start: bool = False
    """Fit the new classifier on the frozen features of the labeled images first (L-BFGS logistic
    regression, "linear probe then fine-tune"), instead of the paper's zero classifier. Off by default: in
    benchmarks/finetune_ablation.py on the demo's features it changed the result by -0.4 to +0.4 points."""
    warm_start_l2: float = 1e-3
    """L2 penalty of that fit (features not standardised)."""
    epochs: int | None = None
    """None = the paper's rule: 60 epochs below 10% labels, 30 from 10% up (SPEC 4)."""
    batch_size: int | None = None
    """None = 256, or for small labeled sets about 12 steps per epoch (min 16; the paper's 1% run has 12.5):
    100 labels -> 16, 600 -> 32. Training runs ``N * epochs // batch_size + 1`` steps (the labeled set
    repeated)."""
    max_steps: int | None = None
    """Stop after this many steps (smoke tests); the schedule still spans ``epochs``."""
    crop_min_scale: float = 0.08
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    log_every_steps: int = 20
    checkpoint_every_steps: int = 0
    """Also checkpoint every N steps inside an epoch (0 = at the end of each epoch only)."""
    eval_batch_size: int = 512
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)

    def validate(self) -> None:
        if not self.pretrained:
            raise ConfigError("pretrained: give the pretraining checkpoint, e.g. --pretrained runs/x/last.pt")
        _validate_classify(self)
        if self.from_layer is not None and self.from_layer < -1:
            raise ConfigError(f"from_layer must be -1 (z) or >= 0, got {self.from_layer}.")


@dataclass
class SupervisedConfig:
    """Baseline: the same backbone trained from scratch on the labeled subset only (SPEC 4)."""

    run_dir: str = "runs/supervised"
    seed: int = 0
    labels: str = "10%"
    label_index_file: str | None = None
    """As in fine-tuning; point it at a fine-tune run's label_indices.txt to use the same labels."""
    backbone: str = "r18_1x_sk0"
    small_images: bool | None = None
    """None = small-image stem when the crop is <= 64 px (as in pretraining)."""
    epochs: int | None = None
    """None = the fine-tuning rule: 60 epochs below 10% labels, 30 from 10% up."""
    batch_size: int | None = None
    """As in fine-tuning: None = 256, or about 12 steps per epoch for small labeled sets."""
    max_steps: int | None = None
    crop_min_scale: float = 0.08
    lr_grid: list[float] = field(default_factory=lambda: [0.3, 1.0, 3.0])
    """Multipliers of the scaled base LR tried on the validation split; the best one is retrained on all
    labels."""
    epochs_grid: list[int] = field(default_factory=list)
    """Epoch counts tried on the validation split with every LR of ``lr_grid`` (empty = ``epochs`` only)."""
    val_fraction: float = 0.1
    """Class-balanced part of the labeled subset held out for the LR choice (never the test split)."""
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    log_every_steps: int = 20
    checkpoint_every_steps: int = 0
    eval_batch_size: int = 512
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_supervised_optim)

    def validate(self) -> None:
        _validate_classify(self)
        from simclrv2.models.registry import parse_backbone_name

        try:
            parse_backbone_name(self.backbone)
        except ValueError as err:
            raise ConfigError(f"backbone: {err}") from None


@dataclass
class LinearEvalConfig:
    """Linear evaluation and kNN on frozen backbone features h (SPEC 4)."""

    run_dir: str = "runs/linear_eval"
    seed: int = 0
    pretrained: str = ""
    use_ema: bool = False
    """Evaluate the EMA encoder of a run pretrained with ``memory.size > 0`` instead of the online one."""
    labels: str = "100%"
    """Train the linear classifier on this labeled subset of the training split."""
    label_index_file: str | None = None
    l2_grid: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    """L2 strengths tried for the logistic regression; the best on the validation split is refit on all."""
    val_fraction: float = 0.1
    max_iter: int = 100
    """L-BFGS iterations per fit."""
    augmented: bool = False
    """The paper's ImageNet protocol instead (SPEC 4): a linear classifier trained through the frozen
    network on crop + flip views with momentum SGD, LR base_lr * B / 256, cosine, ``epochs`` epochs."""
    epochs: int = 90
    """augmented only: epochs (90 on ImageNet, 100 on CIFAR)."""
    batch_size: int | None = None
    """augmented only; as in fine-tuning (None = 256, or about 12 steps per epoch for small labeled sets)."""
    base_lr: float = 0.1
    """augmented only: LR = base_lr * B / 256."""
    max_steps: int | None = None
    """augmented only: stop after this many steps (smoke tests)."""
    knn_k: int = 200
    knn_temperature: float = 0.1
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    eval_batch_size: int = 512
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> None:
        if not self.pretrained:
            raise ConfigError("pretrained: give the pretraining checkpoint, e.g. --pretrained runs/x/last.pt")
        _check_choice("data.name", self.data.name, DATASET_NAMES)
        _check_choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        _check_choice("precision", self.precision, ("auto", "bf16", "fp32"))
        _check_label_spec(self.labels)
        _check_data(self.data)
        if not self.l2_grid or any(not v >= 0 for v in self.l2_grid):
            raise ConfigError(f"l2_grid must be a non-empty list of values >= 0, got {self.l2_grid}.")
        _check_range("val_fraction", self.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_positive("max_iter", self.max_iter)
        for key in ("epochs", "batch_size", "base_lr"):
            if get_key(self, key) is not None:
                _check_positive(key, get_key(self, key))
        if self.max_steps is not None:
            _check_positive("max_steps", self.max_steps)
        _check_positive("knn_k", self.knn_k)
        _check_positive("knn_temperature", self.knn_temperature)
        _check_positive("eval_batch_size", self.eval_batch_size)


def _distill_optim() -> OptimConfig:
    # SPEC 6: students train with the pretraining optimiser settings (LARS, 0.1 * sqrt(B), wd 1e-4, warmup
    # 5% of the 100 default epochs). Without the warmup the zero-initialised classifier (plain momentum SGD,
    # excluded from LARS) takes steps of 0.1 * sqrt(B) on gradients scaled by 1/tau and the student collapses.
    return OptimConfig(optimizer="lars", base_lr=0.1, lr_scaling="sqrt", weight_decay=1e-4, warmup_epochs=5.0)


@dataclass
class DistillConfig:
    """Stage 3: distill a fine-tuned teacher into a student on all (unlabeled) training images (SPEC 6)."""

    run_dir: str = "runs/distill"
    seed: int = 0
    teacher: str = ""
    """The fine-tuned teacher's checkpoint (``last.pt`` of a finetune run)."""
    student: str = "same"
    """``same`` = the teacher's backbone (self-distillation), or a backbone name such as r18_0.5x_sk0."""
    student_init: str | None = "auto"
    """The student's backbone at the start: ``scratch`` (or None; the paper, for its 400-epoch students),
    ``teacher`` (the fine-tuned teacher's backbone; self-distillation only), ``auto`` (``teacher`` for a
    self-distilled student on a small budget, up to 10 epochs, else scratch: docs/distillation.md), or the
    path of a pretrain/finetune/distill checkpoint whose backbone fits the student."""
    warm_start: bool = True
    """When the student starts from a trained backbone (``student_init`` not scratch), fit its new linear
    classifier to the teacher's predictions first (L-BFGS on frozen features; docs/distillation.md)."""
    temperature: float | None = None
    """Softmax temperature for teacher and student; None = 0.1 for self-distillation, 1.0 big-to-small."""
    alpha: float = 1.0
    """Weight of the distillation loss; 1 - alpha goes to cross-entropy on the teacher's labeled subset."""
    exclude_labeled: bool = False
    """Train the student on the unlabeled images only (the teacher's labeled subset left out); the paper
    uses the whole training set."""
    epochs: float = 100
    """Passes over the training images; fractions allowed (e.g. 0.5 for a quick student started from the
    teacher)."""
    batch_size: int = 256
    max_steps: int | None = None
    crop_min_scale: float = 0.08
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    log_every_steps: int = 20
    checkpoint_every_steps: int = 0
    eval_batch_size: int = 512
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=_distill_optim)

    def validate(self) -> None:
        if not self.teacher:
            raise ConfigError(
                "teacher: give the fine-tuned teacher's checkpoint, e.g. --teacher runs/ft/last.pt"
            )
        _validate_classify(self, labels=False)
        _check_range("alpha", self.alpha, 0.0, 1.0)
        if self.exclude_labeled and self.alpha < 1.0:
            raise ConfigError(
                "exclude_labeled=true leaves no labeled images for alpha < 1; use one or the other"
            )
        if self.temperature is not None:
            _check_positive("temperature", self.temperature)
        if self.student not in ("", "same"):
            from simclrv2.models.registry import parse_backbone_name

            try:
                parse_backbone_name(self.student)
            except ValueError as err:
                raise ConfigError(f"student: {err}") from None


@dataclass
class PipelineConfig:
    """The whole recipe: pretrain -> linear eval -> fine-tune -> distill -> supervised baseline -> report.

    Each stage's settings are a section with that stage's keys (``pretrain:``, ``finetune:``, ...); the
    pipeline fills in what links them (run directories, checkpoints, labels, seeds, the shared ``data``).
    """

    run_dir: str = "runs/pipeline"
    seed: int = 0
    """Pretraining seed."""
    labels: list[str] = field(default_factory=lambda: ["1%", "10%"])
    """Label subsets (columns of the table): 1%, 10%, N/class ..."""
    label_seeds: list[int] = field(default_factory=lambda: [0])
    """One run of every post-pretraining stage per seed (subset, init, order); tables give mean +- std."""
    finetune_layers: list[int] = field(default_factory=lambda: [0, 1])
    """Fine-tune from these head layers (SPEC 2: 1 is the SimCLRv2 default)."""
    distill_from_layer: int = 1
    """Teacher for distillation: the fine-tuned model from this head layer."""
    distill_students: list[str] = field(default_factory=lambda: ["same"])
    """``same`` = self-distillation; add backbone names for big-to-small; [] = no distillation."""
    distill_init: str = "auto"
    """Self-distillation student's backbone: ``scratch`` (the paper), ``pretrained`` (the pretraining
    checkpoint's backbone), ``teacher`` (the fine-tuned teacher's backbone: the cheapest way to a student
    that matches its teacher on a small budget; docs/distillation.md) or ``auto`` (``teacher`` up to 10
    distillation epochs, else scratch). Smaller students start from scratch."""
    run_linear_eval: bool = True
    run_supervised: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    """Shared by every stage (copied into each stage's ``data`` when the file is read; a stage's own
    ``data`` keys win)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    linear_eval: LinearEvalConfig = field(default_factory=LinearEvalConfig)

    def validate(self) -> None:
        if not self.labels:
            raise ConfigError("labels: give at least one label subset, e.g. [1%, 10%]")
        for labels in self.labels:
            _check_label_spec(labels)
        if not self.label_seeds:
            raise ConfigError("label_seeds: give at least one seed, e.g. [0]")
        _check_choice("distill_init", self.distill_init, ("auto", "scratch", "pretrained", "teacher"))
        for layer in [*self.finetune_layers, self.distill_from_layer]:
            if layer < -1 or layer > self.pretrain.model.head_layers:
                raise ConfigError(
                    f"fine-tune layer {layer} is beyond the projection head's "
                    f"{self.pretrain.model.head_layers} layers (use 0..head_layers or -1)"
                )
        # Validate every stage with the links filled in, so a bad value stops the pipeline before any work;
        # errors name the section (``finetune.optim.base_lr ...``).
        stages: list[tuple[str, Any]] = [
            ("pretrain", dataclasses.replace(self.pretrain, data=self.data)),
            ("finetune", dataclasses.replace(self.finetune, data=self.data, pretrained="<pretrain>")),
            (
                "supervised",
                dataclasses.replace(self.supervised, data=self.data, backbone=self.pretrain.model.backbone),
            ),
            ("linear_eval", dataclasses.replace(self.linear_eval, data=self.data, pretrained="<pretrain>")),
        ]
        for student in self.distill_students or ["same"]:
            stages.append(
                (
                    "distill",
                    dataclasses.replace(self.distill, data=self.data, teacher="<ft>", student=student),
                )
            )
        for section, stage in stages:
            try:
                stage.validate()
            except ConfigError as err:
                raise ConfigError(f"{section}.{err}") from None


def _check_label_spec(labels: str) -> None:
    from simclrv2.data.subsets import parse_label_spec

    if Path(labels).is_file():
        return  # a subset file (one image file name per line)
    try:
        parse_label_spec(labels)
    except ValueError as err:
        raise ConfigError(f"labels: {err} (or a path to a subset file)") from None


def _validate_classify(c: Any, labels: bool = True) -> None:
    _check_choice("data.name", c.data.name, DATASET_NAMES)
    _check_choice("device", c.device.split(":")[0], ("auto", "cpu", "cuda"))
    _check_choice("precision", c.precision, ("auto", "bf16", "fp32"))
    _check_choice("optim.optimizer", c.optim.optimizer, ("lars", "sgd"))
    _check_choice("optim.lr_scaling", c.optim.lr_scaling, ("sqrt", "linear", "none"))
    if labels:
        _check_label_spec(c.labels)
    if c.batch_size is not None:
        _check_positive("batch_size", c.batch_size)
    if c.optim.base_lr is not None:
        _check_positive("optim.base_lr", c.optim.base_lr)
    elif not isinstance(c, FinetuneConfig):
        raise ConfigError("optim.base_lr: only fine-tuning has a default rule; give a value, e.g. 0.1.")
    _check_nonnegative("optim.weight_decay", c.optim.weight_decay)
    _check_range("optim.momentum", c.optim.momentum, 0.0, 1.0, hi_open=True)
    _check_nonnegative("optim.warmup_epochs", c.optim.warmup_epochs)
    _check_range("crop_min_scale", c.crop_min_scale, 0.0, 1.0, lo_open=True)
    _check_positive("log_every_steps", c.log_every_steps)
    _check_nonnegative("checkpoint_every_steps", c.checkpoint_every_steps)
    _check_positive("eval_batch_size", c.eval_batch_size)
    _check_data(c.data)
    if hasattr(c, "lr_grid"):
        if not c.lr_grid or any(not m > 0 for m in c.lr_grid):
            raise ConfigError(f"lr_grid must be a non-empty list of positive multipliers, got {c.lr_grid}.")
        if any(not e > 0 for e in c.epochs_grid):
            raise ConfigError(f"epochs_grid must hold positive epoch counts, got {c.epochs_grid}.")
        _check_range("val_fraction", c.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    for key in ("epochs", "max_steps", "data.image_size"):
        value = get_key(c, key)
        if value is not None:
            _check_positive(key, value)


DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "stl10", "imagefolder", "folder", "synthetic")


def _check_data(data: DataConfig) -> None:
    _check_choice("data.bad_images", data.bad_images, ("fail", "skip"))
    _check_nonnegative("data.cache_gb", data.cache_gb)
    _check_range("data.validation_fraction", data.validation_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
    if data.image_size is not None and data.load_size is not None and data.image_size > data.load_size:
        raise ConfigError(
            f"data.image_size={data.image_size} (the crop) is larger than data.load_size={data.load_size} "
            "(the side the images are loaded at): every crop would be upscaled. Set data.load_size >= "
            f"data.image_size, e.g. --set data.load_size={round(data.image_size / 0.875)}."
        )


C = TypeVar("C")


def _check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}.")


def _check_positive(key: str, value: float | None) -> None:
    if value is None or not value > 0:
        raise ConfigError(f"{key} must be > 0, got {value!r}.")


def _check_nonnegative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{key} must be >= 0, got {value!r}.")


def _check_range(
    key: str, value: float, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False
) -> None:
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ConfigError(f"{key} must be in {lb}{lo}, {hi}{rb}, got {value!r}.")


# --- dict <-> dataclass with type checking --------------------------------------------------------------


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}.")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]  # --set lr_grid=1.0 means a one-element grid
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({type(value).__name__}).")
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}.")
        return from_dict(tp, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the types above are used in configs
        raise TypeError(f"unsupported config annotation {tp!r} for {key}")
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__}).")


def from_dict(cls: type[C], values: Mapping[str, Any], prefix: str = "") -> C:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names, key=str)  # YAML keys may be numbers too
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys here: "
            + ", ".join(prefix + n for n in sorted(names))
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for key, value in values.items():
        default = fields[key].default_factory
        if isinstance(value, Mapping) and default is not dataclasses.MISSING:
            # A partial section overrides the stage's own defaults for it (e.g. fine-tuning's optim has no
            # weight decay and no warmup), not the section class's generic defaults.
            base = default()
            if dataclasses.is_dataclass(base):
                value = _deep_merge(dataclasses.asdict(base), value)  # type: ignore[arg-type]
        kwargs[key] = _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def get_key(config: Any, dotted: str) -> Any:
    obj = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["optim.base_lr=0.3", "epochs=5"]`` -> nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value, e.g. --set epochs=10")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]}); quote text, "
                "e.g. --set 'key=\"text\"'"
            ) from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part}")
        node[parts[-1]] = value
    return nested


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> C:
    """Defaults <- ``base`` <- YAML file <- ``--set`` overrides, then ``validate()``; any problem raises
    ConfigError. ``base``: settings derived by the program (e.g. from the data: ``pipeline --data``), which
    the user's file and overrides still win over."""
    values = _deep_merge(dict(base or {}), user_settings(cls, path, overrides))
    if cls is PipelineConfig:
        values = _share_data(values)
    config = from_dict(cls, values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def user_settings(cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """What the user set: the YAML file's settings (``cls``'s section of a pipeline file) with the ``--set``
    overrides merged in, as a nested dict (no defaults)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (see configs/ for examples)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text (is it a YAML file?)") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(
                f"config file {path} must hold a mapping of settings, got {type(loaded).__name__}"
            )
        values = stage_section(cls, dict(loaded))
    return _deep_merge(values, parse_overrides(overrides))


def stage_section(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """One YAML file per dataset serves every command: a pipeline file (with ``pretrain:``, ``finetune:``
    ... sections) read by a single stage yields that stage's section, plus the shared ``data`` and ``seed``,
    with ``run_dir`` = the pipeline's run_dir/<stage> unless the section sets one. Other files pass as is."""
    section = _SECTIONS.get(cls.__name__)
    if section is None or not isinstance(values.get(section), Mapping):
        return values
    out: dict[str, Any] = {k: values[k] for k in ("seed", "data") if k in values}
    out["run_dir"] = str(Path(values.get("run_dir", PipelineConfig.run_dir)) / section)
    return _deep_merge(out, values[section])


def _share_data(values: dict[str, Any]) -> dict[str, Any]:
    """Pipeline files: the top-level ``data`` reaches every stage; a stage's own ``data`` keys win
    (e.g. STL-10 pretrains and distills on ``train+unlabeled`` but fine-tunes on ``train``)."""
    shared = values.get("data")
    if not isinstance(shared, Mapping):
        return values
    out = dict(values)
    for section in _SECTIONS.values():
        stage = out.get(section) or {}
        if isinstance(stage, Mapping):
            out[section] = _deep_merge({"data": shared}, stage)
    return out


_SECTIONS = {
    "PretrainConfig": "pretrain",
    "FinetuneConfig": "finetune",
    "DistillConfig": "distill",
    "SupervisedConfig": "supervised",
    "LinearEvalConfig": "linear_eval",
}


def save_config(config: Any, path: str | Path) -> None:
    """``config`` as YAML (main process only under torchrun)."""
    from simclrv2.distributed import is_main_process

    if not is_main_process():
        return
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
