"""Linear evaluation and kNN on frozen backbone features h (SPEC 4).

The backbone is frozen and in eval mode; features of centre-cropped images (no augmentation) are computed
once. The linear classifier is a multinomial logistic regression fitted full-batch with L-BFGS on the cached,
standardised features, with the L2 strength chosen on a class-balanced validation split of the labeled
training images (never the test split) and then refitted on all of them. This is the protocol the
SimCLR (v1) paper uses for linear evaluation on its transfer datasets (L2-regularised multinomial logistic
regression, L-BFGS, no augmentation, regularisation picked on a validation split), not the ImageNet one of
SPEC 4 (SGD with crop + flip for 90 epochs through the frozen network): it is deterministic, needs no LR
tuning and takes seconds on 60k cached features. ``augmented: true`` runs the ImageNet protocol instead
(:func:`linear_eval_augmented`: crop + flip views through the frozen network, momentum SGD, cosine).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclrv2 import distributed
from simclrv2.checkpoint import CheckpointError, load_checkpoint
from simclrv2.config import LinearEvalConfig, save_config
from simclrv2.data.subsets import labeled_subset, split_validation
from simclrv2.engine.classify import (
    ClassifierTrainer,
    TrainSettings,
    check_run_dir,
    classification_metrics,
    fit_batch_size,
)
from simclrv2.engine.evaluate import extract_features, knn_classify, topk_accuracy
from simclrv2.engine.finetune import load_split_pair
from simclrv2.engine.memory import pretrained_state
from simclrv2.engine.runtime import (
    device_type,
    echo,
    resolve_device,
    resolve_precision,
    seed_everything,
    write_json,
)
from simclrv2.engine.warm_start import fit_logistic_regression
from simclrv2.models import Classifier, ResNet, create_backbone

__all__ = [
    "FrozenBackboneLinear",
    "fit_logistic_regression",
    "knn_eval",
    "linear_eval",
    "linear_eval_augmented",
    "load_pretrained_backbone",
]


def load_pretrained_backbone(path: str | Path, use_ema: bool = False) -> tuple[ResNet, dict[str, Any]]:
    """The backbone of a pretraining checkpoint (strict: every backbone key present, shapes equal);
    ``use_ema``: the EMA encoder's (runs pretrained with ``memory.size > 0``) instead of the online one."""
    ckpt = load_checkpoint(path, stage="pretrain")
    model_config = ckpt["config"]["model"]
    backbone = create_backbone(
        model_config["backbone"], bool(ckpt["small_images"]), bool(model_config.get("tf_same_pool", False))
    )
    prefix = "model.backbone."
    weights = pretrained_state(ckpt, use_ema, path)
    state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: backbone weights do not fit: {str(err).splitlines()[0]}") from None
    return backbone, ckpt


def _standardise(train: Tensor, *others: Tensor) -> list[Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def _features(config: LinearEvalConfig) -> dict[str, Any]:
    """Frozen-backbone features of the labeled training subset and the test split (extracted in shards
    under torchrun; every rank then holds all of them and fits the same classifier, rank 0 writes)."""
    distributed.init_from_env(device_type(config.device))
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed_everything(config.seed)
    backbone, _ckpt = load_pretrained_backbone(config.pretrained, config.use_ema)
    backbone = backbone.to(device)
    if config.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
    train_full, test = load_split_pair(config.data, config.seed)
    if test is None:
        raise FileNotFoundError(f"{config.data.name} has no test split to evaluate on")
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    index_file = config.label_index_file or run_dir / "label_indices.txt"
    train, how = labeled_subset(train_full, config.labels, config.seed, index_file)
    crop = config.data.image_size or train.image_shape[-1]
    t0 = time.time()
    kw: dict[str, Any] = dict(
        precision=precision, batch_size=config.eval_batch_size, crop_size=crop,
        channels_last=config.channels_last, distributed=True,
    )  # fmt: skip
    train_f, train_l = extract_features(backbone, train, device, desc="train features", **kw)
    test_f, test_l = extract_features(backbone, test, device, desc="test features", **kw)
    return {
        "train": (train_f, train_l),
        "test": (test_f, test_l),
        "classes": test.classes or train_full.classes,
        "eval_name": test.eval_name,  # "validation" for a user folder's held-out labeled images
        "num_classes": len(train_full.classes),
        "labels_how": how,
        "num_labeled": len(train),
        "feature_seconds": time.time() - t0,
        "precision": precision,
        "device": str(device),
        "run_dir": run_dir,
    }


class FrozenBackboneLinear(nn.Module):
    """A frozen backbone, always in eval mode (BN uses its running statistics), under a trainable
    zero-initialised linear classifier on h. Only ``classifier`` has trainable parameters."""

    def __init__(self, backbone: ResNet, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.classifier = Classifier(backbone.num_features, num_classes)

    def train(self, mode: bool = True) -> FrozenBackboneLinear:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            h = self.backbone(x)
        return self.classifier(h)


def linear_eval_augmented(config: LinearEvalConfig, show_progress: bool = True) -> dict[str, Any]:
    """SPEC 4's linear evaluation: crop + flip views through the frozen backbone (eval mode), a linear
    classifier trained with momentum SGD (no weight decay), LR base_lr * B / 256, cosine, ``epochs`` epochs.
    Writes ``linear_eval.json`` (and the trainer's results.json/eval.json) and returns it."""
    distributed.init_from_env(device_type(config.device))
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed_everything(config.seed)
    backbone, _ckpt = load_pretrained_backbone(config.pretrained, config.use_ema)
    train_full, test = load_split_pair(config.data, config.seed)
    run_dir = Path(config.run_dir)
    index_file = config.label_index_file or run_dir / "label_indices.txt"
    check_run_dir(run_dir, resume=False)
    train, _how = labeled_subset(train_full, config.labels, config.seed, index_file)
    model = FrozenBackboneLinear(backbone, len(train_full.classes)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch = fit_batch_size(config.batch_size, len(train), "linear_eval")
    settings = TrainSettings(
        stage="linear_eval", run_dir=run_dir, seed=config.seed, device=device, precision=precision,
        batch_size=batch, epochs=config.epochs, peak_lr=config.base_lr * batch / 256, optimizer="sgd",
        max_steps=config.max_steps, crop_size=config.data.image_size or train.image_shape[-1],
        channels_last=config.channels_last, eval_batch_size=config.eval_batch_size, config=config,
        extra={"num_labeled": len(train)}, show_progress=show_progress,
    )  # fmt: skip
    results = ClassifierTrainer(settings, model, train, test).run(
        extra_results={
            "pretrained": config.pretrained,
            "use_ema": config.use_ema,
            "method": "linear classifier through the frozen backbone on crop + flip views, momentum SGD",
            "labels": config.labels,
            "num_labeled": len(train),
        }
    )
    write_json(run_dir / "linear_eval.json", results)
    distributed.barrier()
    return results


def linear_eval(config: LinearEvalConfig, show_progress: bool = True) -> dict[str, Any]:
    """Fit the linear classifier on cached features (or, with ``augmented``, through the frozen network on
    augmented views); writes ``linear_eval.json`` and returns it."""
    if config.augmented:
        return linear_eval_augmented(config, show_progress)
    f = _features(config)
    (train_f, train_l), (test_f, test_l) = f["train"], f["test"]
    num_classes = f["num_classes"]
    t0 = time.time()
    idx_tr, idx_val = split_validation(torch.arange(len(train_l)), train_l, config.val_fraction, config.seed)
    xs_tr, xs_val = _standardise(train_f[idx_tr], train_f[idx_val])
    grid = {}
    for l2 in config.l2_grid:
        w, b = fit_logistic_regression(xs_tr, train_l[idx_tr], num_classes, l2, config.max_iter)
        grid[str(l2)] = topk_accuracy(xs_val @ w.T + b, train_l[idx_val])["top1"]
        echo(f"linear-eval: l2 {l2:g}: validation top-1 {grid[str(l2)]:.2f}%")
    best_l2 = max(config.l2_grid, key=lambda v: (grid[str(v)], v))  # ties -> stronger regularisation
    xs_all, xs_test = _standardise(train_f, test_f)
    w, b = fit_logistic_regression(xs_all, train_l, num_classes, best_l2, config.max_iter)
    metrics = classification_metrics(xs_test @ w.T + b, test_l, f["classes"])
    results = {
        "stage": "linear_eval",
        "pretrained": config.pretrained,
        "use_ema": config.use_ema,
        "method": "multinomial logistic regression, L-BFGS on frozen centre-crop features h",
        "labels": config.labels,
        "num_labeled": f["num_labeled"],
        "feature_dim": int(train_f.shape[1]),
        "l2": best_l2,
        "validation_top1_by_l2": grid,
        "validation_size": len(idx_val),
        "train_top1": topk_accuracy(xs_all @ w.T + b, train_l)["top1"],
        "test": metrics,
        "evaluated_on": f["eval_name"],
        "feature_seconds": f["feature_seconds"],
        "fit_seconds": time.time() - t0,
        "precision": f["precision"],
        "device": f["device"],
    }
    top = f"top-1 {metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%"
    echo(f"linear-eval: {f['eval_name']} {top} (l2 {best_l2:g})")
    write_json(f["run_dir"] / "linear_eval.json", results)
    distributed.barrier()
    return results


def knn_eval(config: LinearEvalConfig) -> dict[str, Any]:
    """Weighted kNN top-1/top-5 on frozen features; writes ``knn.json`` and returns it."""
    f = _features(config)
    (train_f, train_l), (test_f, test_l) = f["train"], f["test"]
    scores = knn_classify(
        train_f, train_l, test_f, f["num_classes"], k=config.knn_k, temperature=config.knn_temperature
    )
    results = {
        "stage": "knn",
        "pretrained": config.pretrained,
        "use_ema": config.use_ema,
        "labels": config.labels,
        "num_labeled": f["num_labeled"],
        "k": config.knn_k,
        "temperature": config.knn_temperature,
        "test": topk_accuracy(scores, test_l),
        "evaluated_on": f["eval_name"],
        "feature_seconds": f["feature_seconds"],
        "precision": f["precision"],
        "device": f["device"],
    }
    echo(f"knn: {f['eval_name']} top-1 {results['test']['top1']:.2f}% top-5 {results['test']['top5']:.2f}%")
    write_json(f["run_dir"] / "knn.json", results)
    distributed.barrier()
    return results
