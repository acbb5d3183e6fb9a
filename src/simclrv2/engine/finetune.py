"""Stage 2: fine-tune the pretrained network from projection-head layer k on a labeled subset (SPEC 2, 4).

Pretrained backbone + head layers 1..k + a new zero-initialised classifier, all trained with LARS
(0.005·√B, no weight decay, no warmup), crop + flip only, 60 epochs below 10% labels and 30 from 10% up.
The architecture comes from the pretraining checkpoint; the labeled subset is drawn once and saved in the run
directory (``label_indices.txt``) so the supervised baseline and linear evaluation can reuse it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from simclrv2 import distributed
from simclrv2.checkpoint import CheckpointError, load_checkpoint, load_state_checked
from simclrv2.config import FinetuneConfig
from simclrv2.data import ImageData, load_dataset
from simclrv2.data.datasets import folder_options
from simclrv2.data.subsets import default_epochs, resolve_label_indices, split_validation, subset_data
from simclrv2.engine.classify import check_run_dir, train_and_evaluate
from simclrv2.engine.memory import pretrained_state
from simclrv2.engine.runtime import (
    device_type,
    echo,
    resolve_device,
    resolve_precision,
    seed_everything,
    write_json,
)
from simclrv2.engine.tuning import candidates, choose_on_validation, search_verdict
from simclrv2.engine.warm_start import fit_classifier, warm_start_subset
from simclrv2.models import (
    FineTuneModel,
    ProjectionHead,
    create_backbone,
    load_pretrained_into,
    parse_backbone_name,
)
from simclrv2.models.meta import meta_modules

__all__ = [
    "build_model_from_checkpoint",
    "default_from_layer",
    "finetune",
    "finetune_base_lr",
    "load_split_pair",
    "model_arch",
]

STAGE = "finetune"


def load_split_pair(data_cfg: Any, seed: int) -> tuple[ImageData, ImageData | None]:
    """The labeled training split (``data.train_split``) and the test split (None when there is none)."""
    kwargs: dict[str, Any] = dict(
        root=data_cfg.root,
        download=data_cfg.download,
        seed=seed,
        image_size=data_cfg.load_size,
        bad_images=data_cfg.bad_images,
        **folder_options(data_cfg),
    )
    train = load_dataset(
        data_cfg.name, data_cfg.train_split, synthetic_size=data_cfg.synthetic_size, **kwargs
    )
    try:
        test: ImageData | None = load_dataset(data_cfg.name, "test", **kwargs)
    except (FileNotFoundError, ValueError):
        test = None
    return train, test


def model_arch(
    backbone: str,
    small_images: bool,
    head_layers: int,
    head_dim: int,
    from_layer: int,
    num_classes: int,
    tf_same_pool: bool = False,
) -> dict[str, Any]:
    """What :func:`build_model_from_checkpoint` needs; stored as ``arch`` in every classifier checkpoint.
    ``tf_same_pool`` (converted official models only) is stored only when set."""
    arch: dict[str, Any] = {
        "backbone": backbone,
        "small_images": small_images,
        "head_layers": head_layers,
        "head_dim": head_dim,
        "from_layer": from_layer,
        "num_classes": num_classes,
    }
    if tf_same_pool:
        arch["tf_same_pool"] = True
    return arch


def build_model(arch: dict[str, Any]) -> FineTuneModel:
    backbone = create_backbone(arch["backbone"], arch["small_images"], bool(arch.get("tf_same_pool", False)))
    head = None
    if arch["head_layers"] > 0:
        head = ProjectionHead(backbone.num_features, num_layers=arch["head_layers"], out_dim=arch["head_dim"])
    return FineTuneModel(backbone, head, arch["from_layer"], arch["num_classes"])


def build_model_from_checkpoint(ckpt: dict[str, Any] | str | Path) -> FineTuneModel:
    """Rebuild a fine-tuned (or supervised) model with its weights from a classifier checkpoint.

    Used by distillation to load the teacher. The state dict must match exactly.
    """
    source = f"a {ckpt.get('stage')!r} checkpoint" if isinstance(ckpt, dict) else str(ckpt)
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    if "arch" not in ckpt:
        raise CheckpointError(
            f"a {ckpt.get('stage')!r} checkpoint has no 'arch' entry: "
            "expected a finetune or supervised checkpoint"
        )
    with meta_modules():  # no random init of weights that are replaced at once (minutes for R152 3x)
        model = build_model(ckpt["arch"])
    # The module takes the checkpoint's tensors (no copy), in the default memory format as a freshly built
    # module has them (a run trained channels-last saves channels-last weights).
    state = {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in ckpt["model"].items()}
    load_state_checked(model, state, source, assign=True)
    return model


def _train_once(
    config: FinetuneConfig,
    pre: dict[str, Any],
    arch: dict[str, Any],
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
    seed_everything(config.seed)  # every grid candidate and the final run start from the same state
    model = build_model(arch)
    load_pretrained_into(model, pretrained_state(pre, config.use_ema, config.pretrained))
    if config.warm_start and not resume:  # a resumed run loads its own classifier
        feature_pass = {
            "device": device, "precision": precision, "batch_size": config.eval_batch_size,
            "crop_size": config.data.image_size or train.image_shape[-1],
            "channels_last": config.channels_last,
        }  # fmt: skip
        fit_classifier(model.to(device), warm_start_subset(train), None, feature_pass,
                       config.warm_start_l2, show_progress=show_progress)  # fmt: skip
    return train_and_evaluate(
        config, STAGE, model, run_dir, train, evaluate_on, lr_multiplier, epochs, device, precision, resume,
        show_progress, {"arch": arch, **extra}, eval_name,
    )  # fmt: skip


# SPEC 4: fine-tuning LARS base LRs (peak = base * sqrt(B)): R50 1x, and the narrower nets we add, use 0.005;
# wider (> 1x) or selective-kernel networks 0.002.
FINETUNE_BASE_LR = 0.005
FINETUNE_BASE_LR_WIDE_OR_SK = 0.002


def finetune_base_lr(backbone: str) -> float:
    """The paper's fine-tuning base LR (SPEC 4): 0.002 for wider than 1x or SK backbones, else 0.005."""
    _depth, width, sk_ratio = parse_backbone_name(backbone)
    return FINETUNE_BASE_LR_WIDE_OR_SK if width > 1 or sk_ratio > 0 else FINETUNE_BASE_LR


def default_from_layer(labels: str, fraction: float) -> int:
    """SPEC 4: fine-tune from head layer 1 below 100% labels, from the backbone output (0) at 100%."""
    full = labels.strip() == "100%" or fraction >= 1.0 - 1e-9
    return 0 if full else 1


def finetune(config: FinetuneConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune from ``config.pretrained`` on the labeled subset; returns (and writes) ``results.json``.
    Under torchrun every rank calls this (see :class:`ClassifierTrainer` for what is distributed).

    With more than one (``lr_grid`` x ``epochs_grid``) candidate, each is first trained on the labeled subset
    minus a class-balanced validation split and scored there (:mod:`simclrv2.engine.tuning`); the best is
    then trained on the whole subset and tested."""
    distributed.init_from_env(device_type(config.device))
    run_dir = Path(config.run_dir)
    if not (resume and (run_dir / "grid").is_dir()):  # a search may stop before run_dir/last.pt exists
        check_run_dir(run_dir, resume)
    pre = load_checkpoint(config.pretrained, stage="pretrain")
    pconf = pre["config"]["model"]
    small = bool(pre["small_images"])
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)

    train_full, test = load_split_pair(config.data, config.seed)
    index_file = config.label_index_file or run_dir / "label_indices.txt"
    idx, how = resolve_label_indices(train_full, config.labels, config.seed, index_file)
    fraction = len(idx) / len(train_full)
    epochs = config.epochs or default_epochs(config.labels, len(idx), len(train_full))
    say = echo if show_progress else (lambda _msg: None)
    resolved: dict[str, Any] = {}
    if config.from_layer is None:
        resolved["from_layer"] = default_from_layer(config.labels, fraction)
    if config.optim.base_lr is None:
        base_lr = finetune_base_lr(pconf["backbone"])
        resolved["optim"] = dataclasses.replace(config.optim, base_lr=base_lr)
        say(
            f"finetune: base LR {base_lr:g} * sqrt(B) for {pconf['backbone']} "
            "(SPEC 4; set optim.base_lr to change)"
        )
    config = dataclasses.replace(
        config, **resolved
    )  # the resolved values go into config.yaml and checkpoints
    assert config.from_layer is not None
    which = "the EMA encoder" if config.use_ema else "the online network"
    say(
        f"finetune: {len(idx)} labeled images ({fraction:.2%} of {len(train_full)}; {how}), "
        f"{which}, from head layer {config.from_layer}"
    )
    num_classes = len(train_full.classes)
    arch = model_arch(
        pconf["backbone"], small, pconf["head_layers"], pconf["head_dim"], config.from_layer, num_classes,
        bool(pconf.get("tf_same_pool", False)),
    )  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {"label_index_file": str(index_file)}

    grid = candidates(config.lr_grid, config.epochs_grid, epochs)
    record: dict[str, Any] = {}
    lr_multiplier = grid[0][0]
    if len(grid) > 1:
        tr_idx, val_idx = split_validation(idx, train_full.labels, config.val_fraction, config.seed)

        def train_candidate(sub: Path, mult: float, ep: int) -> dict[str, Any]:
            return _train_once(
                config, pre, arch, sub, subset_data(train_full, tr_idx), subset_data(train_full, val_idx),
                mult, ep, device, precision, (sub / "last.pt").exists(), show_progress, extra, "validation",
            )  # fmt: skip

        (lr_multiplier, epochs), record = choose_on_validation(run_dir, grid, train_candidate, say, STAGE)
        say(
            f"finetune: chose LR x{lr_multiplier:g}, {epochs} epochs; "
            f"training on all {len(idx)} labeled images"
        )
    else:
        epochs = grid[0][1]
    say(f"finetune: {epochs} epochs")
    results = _train_once(
        config, pre, arch, run_dir, subset_data(train_full, idx), test, lr_multiplier, epochs, device,
        precision, resume and (run_dir / "last.pt").exists(), show_progress, extra,
    )  # fmt: skip
    verdict = search_verdict(record, num_classes)
    if not verdict["trained"]:
        say(f"{STAGE}: NOT TRAINED: {verdict['not_trained']}")
    results.update(
        {
            **verdict,
            "pretrained": str(config.pretrained),
            "from_layer": config.from_layer,
            "use_ema": config.use_ema,
            "labels": config.labels,
            "num_labeled": len(idx),
            "label_fraction": fraction,
            "label_index_file": str(index_file),
            "lr_grid": record,
            "chosen_lr_multiplier": lr_multiplier,
            "chosen_epochs": epochs,
        }
    )
    write_json(run_dir / "results.json", results)
    return results
