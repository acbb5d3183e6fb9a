"""Stage 3: distillation / self-training on unlabeled images (SPEC 6).

The fine-tuned teacher is frozen in eval mode (never wrapped for gradients, never in the optimiser); the
student (the teacher's backbone for self-distillation, or a smaller one) has no projection head: a classifier
on h. Both see the same crop + flip view of every training image, labels unused (alpha = 1, the default), or
mixed with the labeled subset's cross-entropy (alpha < 1; labels outside the teacher's subset are ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclrv2 import distributed
from simclrv2.checkpoint import CheckpointError, load_checkpoint
from simclrv2.config import ConfigError, DistillConfig
from simclrv2.data import ImageData
from simclrv2.data.subsets import load_indices, subset_data
from simclrv2.engine.classify import ClassifierTrainer, TrainSettings, check_run_dir, predict_logits
from simclrv2.engine.finetune import build_model, build_model_from_checkpoint, load_split_pair, model_arch
from simclrv2.engine.runtime import (
    autocast,
    device_type,
    echo,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from simclrv2.engine.warm_start import WARM_START_IMAGES, fit_classifier, warm_start_subset
from simclrv2.losses import distillation_loss
from simclrv2.models import parse_backbone_name
from simclrv2.optim import scale_learning_rate

__all__ = ["distill", "resolve_student"]

STAGE = "distill"


def resolve_student(student: str, teacher_backbone: str) -> tuple[str, bool]:
    """(backbone name, is self-distillation). ``same`` means the teacher's backbone."""
    name = teacher_backbone if student in ("", "same") else student
    try:
        parse_backbone_name(name)
    except ValueError as err:
        raise ConfigError(f"student: {err}") from None
    return name, name == teacher_backbone


# Up to this many epochs a self-distilled student starts from the teacher's backbone under student_init=auto:
# from scratch (the paper: 400 epochs) it cannot catch up on a small budget (docs/distillation.md).
SMALL_BUDGET_EPOCHS = 10.0


def resolve_student_init(student_init: str | None, is_self: bool, epochs: float, teacher: str) -> str | None:
    """The checkpoint whose backbone the student starts from (None = from scratch); see
    ``DistillConfig.student_init``."""
    if student_init in (None, "", "scratch"):
        return None
    if student_init == "auto":
        return teacher if is_self and epochs <= SMALL_BUDGET_EPOCHS else None
    if student_init == "teacher":
        if not is_self:
            raise ConfigError(
                "student_init=teacher needs self-distillation (the student's backbone is the teacher's); "
                "a smaller student starts from scratch or from a checkpoint of its own backbone"
            )
        return teacher
    return student_init


def _init_student_from(model: nn.Module, path: str) -> None:
    """Initialise the student's backbone from a pretrain/finetune/distill checkpoint (strict on it)."""
    ckpt = load_checkpoint(path)
    prefix = "model.backbone." if ckpt.get("stage") == "pretrain" else "backbone."
    state = {k[len(prefix) :]: v for k, v in ckpt["model"].items() if k.startswith(prefix)}
    backbone = model.get_submodule("backbone")
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: its backbone does not match the student's; missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}"
        )


def warm_start_classifier(
    student: nn.Module,
    teacher: nn.Module,
    train: ImageData,
    temperature: float,
    feature_pass: dict[str, Any],
    show_progress: bool = True,
) -> float:
    """Fit the student's new classifier to its teacher before distillation (:mod:`.warm_start`): logistic
    regression of the teacher's softened predictions P_T(y|x; tau) on the student's frozen h, scaled by tau.
    Returns how often the fitted student and the teacher agree (top-1, %) on the images fitted on.

    A short distillation from the teacher's backbone with a fresh classifier (the demo's half epoch, tau 0.1)
    ended 5-6 points below its teacher; warm-started, within 0.2 points (docs/distillation.md)."""
    sub = warm_start_subset(train)
    t, _ = predict_logits(teacher, sub, desc="teacher", show_progress=show_progress, **feature_pass)
    # a tiny l2 keeps L-BFGS bounded where the targets are nearly one-hot (tau = 0.1)
    fitted = fit_classifier(
        student, sub, torch.softmax(t / temperature, dim=1), feature_pass, 1e-6, temperature, show_progress
    )
    return float((fitted.argmax(1) == t.argmax(1)).float().mean()) * 100.0


def distill(config: DistillConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Distill ``config.teacher`` into a student on all training images; returns (and writes) results.json.
    Under torchrun only the student is trained through DDP; the frozen teacher runs in eval mode on every
    rank (it needs no synchronisation: eval-mode BN uses running statistics)."""
    distributed.init_from_env(device_type(config.device))
    run_dir = Path(config.run_dir)
    check_run_dir(run_dir, resume)
    teacher_ckpt = load_checkpoint(config.teacher)
    if teacher_ckpt.get("stage") not in ("finetune", "supervised", "distill"):
        raise CheckpointError(
            f"{config.teacher} is a {teacher_ckpt.get('stage')!r} checkpoint; the teacher must be a "
            "fine-tuned classifier (simclrv2 finetune ...)"
        )
    t_arch = teacher_ckpt["arch"]
    student_name, is_self = resolve_student(config.student, t_arch["backbone"])
    temperature = config.temperature if config.temperature is not None else (0.1 if is_self else 1.0)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed_everything(config.seed)

    train, test = load_split_pair(config.data, config.seed)
    labels = torch.full_like(train.labels, -1)  # unlabeled unless alpha < 1 asks for the teacher's labels
    if config.alpha < 1.0 or config.exclude_labeled:
        index_file = teacher_ckpt.get("label_index_file")
        if not index_file or not Path(index_file).is_file():
            raise ConfigError(
                f"alpha < 1 and exclude_labeled need the teacher's labeled subset, but its index file "
                f"{index_file!r} is missing; use alpha=1 (unlabeled only) or keep the fine-tuning run dir"
            )
        idx = load_indices(index_file)
        labels[idx] = train.labels[idx]
    train.labels = labels
    if config.exclude_labeled:
        train = subset_data(train, (labels < 0).nonzero().squeeze(1))

    if config.batch_size > len(train):
        # Distillation trains on every image; the stream loader would repeat images inside one batch.
        fits = 2 ** (len(train).bit_length() - 1)
        raise ValueError(
            f"{train.name or 'dataset'} has {len(train)} images, fewer than one batch of "
            f"{config.batch_size}: lower batch_size (e.g. --set batch_size={fits}) or use more data"
        )
    teacher = build_model_from_checkpoint(teacher_ckpt).to(device)
    teacher.eval().requires_grad_(False)
    arch = model_arch(student_name, bool(t_arch["small_images"]), 0, 0, 0, int(t_arch["num_classes"]))
    student = build_model(arch)
    init = resolve_student_init(config.student_init, is_self, config.epochs, config.teacher)
    if init is not None:
        _init_student_from(student, init)
    student = student.to(device)
    if config.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    say = echo if show_progress else (lambda _msg: None)
    kind = "self-distillation" if is_self else f"{t_arch['backbone']} -> {student_name}"
    start = (
        "from scratch" if init is None else "from the teacher's backbone" if init == config.teacher else init
    )
    say(
        f"distill: {kind}, student {start}, temperature {temperature}, alpha {config.alpha}, "
        f"{len(train)} training images"
    )
    agreement = None
    fresh = not (resume and (run_dir / "last.pt").is_file())  # a resumed run loads its own classifier
    if init is not None and config.warm_start and fresh:
        feature_pass = {
            "device": device, "precision": precision, "batch_size": config.eval_batch_size,
            "crop_size": config.data.image_size or train.image_shape[-1],
            "channels_last": config.channels_last,
        }  # fmt: skip
        agreement = warm_start_classifier(student, teacher, train, temperature, feature_pass, show_progress)
        say(f"distill: classifier fitted to the teacher first: it agrees with it on {agreement:.1f}% of "
            f"{min(WARM_START_IMAGES, len(train))} training images (warm_start)")  # fmt: skip

    def loss_fn(model: nn.Module, images: Tensor, targets: Tensor, step: int) -> Tensor:
        # Teacher and student see the same augmented view; the teacher gets no graph at all.
        with torch.no_grad(), autocast(device, precision):
            teacher_logits = teacher(images)
        with autocast(device, precision):
            student_logits = model(images)
        return distillation_loss(
            student_logits,
            teacher_logits,
            temperature,
            labels=targets if config.alpha < 1.0 else None,
            alpha=config.alpha,
        )

    assert config.optim.base_lr is not None  # validate() requires a value outside fine-tuning
    batch = config.batch_size
    settings = TrainSettings.from_config(
        config,
        stage=STAGE,
        train=train,
        device=device,
        precision=precision,
        batch_size=batch,
        epochs=config.epochs,
        peak_lr=scale_learning_rate(config.optim.base_lr, batch, config.optim.lr_scaling),
        extra={"arch": arch, "teacher": str(config.teacher)},
        show_progress=show_progress,
    )
    trainer = ClassifierTrainer(settings, student, train, test, loss_fn=loss_fn)
    return trainer.run(
        resume,
        extra_results={
            "teacher": str(config.teacher),
            "teacher_backbone": t_arch["backbone"],
            "student": student_name,
            "self_distillation": is_self,
            "temperature": temperature,
            "alpha": config.alpha,
            "student_init": init,
            "warm_start_agreement": agreement,
        },
    )
