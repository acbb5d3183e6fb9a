"""Supervised baseline: the same backbone trained from scratch on the labeled subset only (SPEC 4).

Backbone (small-image stem chosen as in pretraining) + a zero-initialised classifier on h; momentum SGD,
LR 0.1·B/256, weight decay 1e-4, cosine, crop + flip; the fine-tuning epoch rule. The LR multiplier (from
``lr_grid``) and the number of epochs (from ``epochs_grid``) are chosen on a class-balanced validation split
carved from the labeled subset (the test split is never looked at), then the model is retrained on the whole
labeled subset with that choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from simclrv2 import distributed
from simclrv2.config import SupervisedConfig, save_config
from simclrv2.data import ImageData
from simclrv2.data.subsets import default_epochs, resolve_label_indices, split_validation, subset_data
from simclrv2.engine.classify import check_run_dir, train_and_evaluate
from simclrv2.engine.finetune import build_model, load_split_pair, model_arch
from simclrv2.engine.runtime import (
    device_type,
    echo,
    resolve_device,
    resolve_precision,
    seed_everything,
    write_json,
)
from simclrv2.engine.tuning import candidates, choose_on_validation, search_verdict

__all__ = ["supervised"]

STAGE = "supervised"


def _train_once(
    config: SupervisedConfig,
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
    eval_name: str = "test",
) -> dict[str, Any]:
    seed_everything(config.seed)  # every grid point and the final run start from the same initial weights
    return train_and_evaluate(
        config, STAGE, build_model(arch), run_dir, train, evaluate_on, lr_multiplier, epochs, device,
        precision, resume, show_progress, {"arch": arch}, eval_name,
    )  # fmt: skip


def supervised(config: SupervisedConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Choose the LR on a validation split of the labeled subset, retrain on all of it, test once."""
    distributed.init_from_env(device_type(config.device))
    run_dir = Path(config.run_dir)
    if not (resume and (run_dir / "grid").is_dir()):  # a search may stop before run_dir/last.pt exists
        check_run_dir(run_dir, resume)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    say = echo if show_progress else (lambda _msg: None)

    train_full, test = load_split_pair(config.data, config.seed)
    index_file = config.label_index_file or run_dir / "label_indices.txt"
    idx, how = resolve_label_indices(train_full, config.labels, config.seed, index_file)
    fraction = len(idx) / len(train_full)
    epochs = config.epochs or default_epochs(config.labels, len(idx), len(train_full))
    crop = config.data.image_size or train_full.image_shape[-1]
    small = config.small_images if config.small_images is not None else crop <= 64
    num_classes = len(train_full.classes)
    arch = model_arch(config.backbone, small, 0, 0, 0, num_classes)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    say(f"supervised: {len(idx)} labeled images ({fraction:.2%}; {how}), {epochs} epochs, {config.backbone}")

    # 1. (LR, epochs) grid on a validation split of the labeled subset; grid runs are kept in run_dir/grid/.
    tr_idx, val_idx = split_validation(idx, train_full.labels, config.val_fraction, config.seed)
    grid = candidates(config.lr_grid, config.epochs_grid, epochs)

    def train_candidate(sub: Path, mult: float, ep: int) -> dict[str, Any]:
        return _train_once(
            config, arch, sub, subset_data(train_full, tr_idx), subset_data(train_full, val_idx), mult,
            ep, device, precision, (sub / "last.pt").exists(), show_progress, "validation",
        )  # fmt: skip

    (best, epochs), record = choose_on_validation(run_dir, grid, train_candidate, say, STAGE)
    say(f"supervised: chose LR x{best:g}, {epochs} epochs; training on all {len(idx)} labeled images")

    # 2. Train on the whole labeled subset with the chosen setting; test once.
    results = _train_once(
        config, arch, run_dir, subset_data(train_full, idx), test, best, epochs, device, precision,
        resume and (run_dir / "last.pt").exists(), show_progress,
    )  # fmt: skip
    verdict = search_verdict(record, num_classes)
    if not verdict["trained"]:
        say(f"{STAGE}: NOT TRAINED: {verdict['not_trained']}")
    results.update(
        {
            **verdict,
            "backbone": config.backbone,
            "labels": config.labels,
            "num_labeled": len(idx),
            "label_fraction": fraction,
            "label_index_file": str(index_file),
            "lr_grid": record,
            "chosen_lr_multiplier": best,
            "chosen_epochs": epochs,
            "validation_size": len(val_idx),
            "grid_train_size": len(tr_idx),
        }
    )
    write_json(run_dir / "results.json", results)
    distributed.barrier()
    return results
