"""``simclrv2 pipeline --data FOLDER``: the whole recipe on a user's own images, no config needed (issue 14).

A thin layer over :class:`~simclrv2.engine.pipeline.Pipeline`. The folder is the ``folder`` dataset
(:mod:`simclrv2.data.user_folder`: its layouts, splits and bad-input checks); this module

1. derives the recipe from the data (:func:`folder_recipe`) and says it before any work: crop size and stem
   from the images' sizes, blur only above 32 px, colour strength, batch sizes and epochs by the SPEC 4
   rules. The recipe is the base of the config: the user's ``--config`` file and ``--set`` win over it;
2. runs every stage: pretraining on every training image (labeled + pool), fine-tuning from head layer 1
   and the supervised baseline on the labeled images (the same LR grid for both: equal tuning effort),
   distillation on every training image, evaluation on the test set or the held-out validation images;
3. then (:meth:`FolderPipeline.finish`) exports the final student to ``run_dir/model/`` (checkpoint,
   TorchScript, ONNX checked with onnxruntime, class names and preprocessing), labels the pool
   (``pool_predictions.csv``, least confident first) and writes the report's "Data" section: which images
   were used for what.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from simclrv2.config import ConfigError, PipelineConfig, load_config, user_settings
from simclrv2.data.datasets import folder_options, load_dataset
from simclrv2.data.subsets import default_epochs
from simclrv2.data.user_folder import FolderSplits, folder_splits
from simclrv2.engine.pipeline import Pipeline, labels_slug

__all__ = ["FolderPipeline", "folder_pipeline", "folder_recipe", "pretrain_batch_size"]

LABELS = "all"  # every labeled image of the folder's train split (the pool is label -1)
SHARED_LR_GRID = [0.3, 1.0, 3.0]  # fine-tuning and the supervised baseline: the same effort
MAX_BATCH = 512
WARMUP_SHARE = 0.05


def pretrain_batch_size(num_images: int, cap: int = MAX_BATCH) -> int:
    """The largest power of two <= num_images / 8 (>= 8 steps per epoch), at most ``cap``, at least 2 (NT-Xent
    needs negatives; a folder with fewer images than a batch is refused by the loader, naming both)."""
    return min(cap, 2 ** int(math.log2(max(num_images / 8, 2))))


def _crop_and_load(short_side: int) -> tuple[int, int, str]:
    """(crop, load size, why) from the median shorter side of the training images."""
    if short_side <= 128:
        return short_side, short_side, f"the images' size ({short_side} px)"
    if short_side >= 256:
        return 224, 256, f"ImageNet's 224 px (images >= 256 px, median shorter side {short_side} px)"
    crop = 16 * int(0.875 * short_side // 16)
    return crop, round(crop / 0.875), f"87.5% of the median shorter side {short_side} px"


def folder_recipe(splits: FolderSplits) -> tuple[dict[str, Any], dict[str, str]]:
    """The pipeline settings the data calls for (a nested dict, the config's base) and why (dotted key ->
    reason, for the announcement)."""
    n_train = len(splits.labeled_train) + len(splits.unlabeled)
    n_labeled = len(splits.labeled_train)
    crop, load, why_crop = _crop_and_load(splits.median_short_side())
    small = crop <= 64
    batch = pretrain_batch_size(n_train)
    epochs = default_epochs(LABELS, n_labeled, n_train)
    fraction = n_labeled / n_train
    data = {"name": "folder", "image_size": crop, "load_size": load}
    base: dict[str, Any] = {
        "labels": [LABELS],
        "label_seeds": [0],
        "finetune_layers": [1],
        "distill_from_layer": 1,
        "data": data,
        "pretrain": {
            "batch_size": batch,
            "model": {"small_images": small},
            "augment": {"blur": crop > 32, "color_strength": 0.5 if small else 1.0},
            "optim": {"base_lr": 0.075 if small else 0.1},
        },
        "finetune": {"epochs": epochs, "lr_grid": SHARED_LR_GRID},
        "supervised": {"epochs": epochs, "lr_grid": SHARED_LR_GRID},
        "distill": {"batch_size": batch},
    }
    why = {
        "labels": "every labeled image",
        "data.image_size": why_crop,
        "data.load_size": "what evaluation centre-crops 87.5% of" if crop > 32 else "the images' size",
        "pretrain.model.small_images": "3x3 stem without max-pool for crops <= 64 px"
        if small
        else "ImageNet stem for crops > 64 px",
        "pretrain.augment.blur": "SPEC 5: blur only above 32 px",
        "pretrain.augment.color_strength": "SPEC 5: 0.5 CIFAR-size, 1.0 ImageNet-size",
        "pretrain.optim.base_lr": "LARS base LR x sqrt(batch): 0.075 CIFAR-size (SimCLR B.9), 0.1 SPEC 4",
        "pretrain.batch_size": f"largest power of two <= {n_train} / 8, at most {MAX_BATCH}",
        "distill.batch_size": "as pretraining",
        "finetune.epochs": f"SPEC 4: {epochs} epochs, the labels being {fraction:.1%} of the images "
        "(60 below 10%, 30 from 10%)",
        "supervised.epochs": "as fine-tuning",
        "finetune.lr_grid": "LR multipliers chosen on a validation part of the labeled images",
        "supervised.lr_grid": "the same grid: equal tuning effort",
    }
    return base, why


def _is_set(user: dict[str, Any], dotted: str) -> bool:
    """Whether the user's file or ``--set`` gave ``dotted`` (a stage's data keys also come from ``data``)."""
    keys = [dotted]
    _stage, _, rest = dotted.partition(".")
    if rest.startswith("data."):
        keys.append(rest)
    for key in keys:
        node: Any = user
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def folder_pipeline(
    root: str | Path,
    config_path: str | None = None,
    overrides: list[str] | None = None,
    show_progress: bool = True,
    command: str | None = None,
) -> FolderPipeline:
    """Read the folder (layout, header scan, warnings), derive the recipe, build the config (recipe <- the
    user's file <- ``--set``), check the run directory, and say all of it; nothing is trained yet."""
    root_path = Path(root).expanduser()
    overrides = list(overrides or [])
    user = user_settings(PipelineConfig, config_path, overrides)
    data_user: dict[str, Any] = user["data"] if isinstance(user.get("data"), dict) else {}
    policy = str(data_user.get("bad_images", "fail"))
    fraction = data_user.get("validation_fraction")
    splits = folder_splits(root_path, policy, fraction)
    base, why = folder_recipe(splits)
    base["run_dir"] = str(Path("runs") / (root_path.resolve().name or "folder"))
    forced = ["data.name=folder", f"data.root={json.dumps(str(root_path))}"]
    config = load_config(PipelineConfig, config_path, [*overrides, *forced], base=base)
    # warmups are a share of the (possibly user-set) epochs: SPEC 4's 5%
    base["pretrain"]["optim"]["warmup_epochs"] = round(WARMUP_SHARE * config.pretrain.epochs, 3)
    base["distill"]["optim"] = {"warmup_epochs": round(WARMUP_SHARE * config.distill.epochs, 3)}
    why["pretrain.optim.warmup_epochs"] = "SPEC 4: 5% of the epochs"
    why["distill.optim.warmup_epochs"] = "SPEC 4: 5% of the epochs"
    config = load_config(PipelineConfig, config_path, [*overrides, *forced], base=base)
    run_dir = Path(config.run_dir).resolve()
    if run_dir.is_relative_to(root_path.resolve()):
        raise ConfigError(
            f"run_dir {config.run_dir} is inside the data folder {root_path}: its figures and checkpoints "
            "would become training images. Choose another one, e.g. --set run_dir=runs/my_images"
        )
    lines = describe(splits, config, why, user)
    pipe = FolderPipeline(config, splits, lines, show_progress=show_progress, command=command)
    for line in lines:
        pipe.say(line)
    return pipe


def describe(splits: FolderSplits, config: PipelineConfig, why: dict[str, str], user: dict) -> list[str]:
    """What was found and what will run, one line each: printed before any work and kept in the report."""
    s, layout = splits, splits.layout
    per_class = s.per_class(s.labeled_train)
    lines = [
        f"data: {layout.root}: {layout.describe()}",
        f"data: {len(s.classes)} classes; {len(s.labeled_train)} labeled images to train on "
        f"({min(per_class.values())}-{max(per_class.values())} per class), {len(s.unlabeled)} unlabeled",
    ]
    if layout.test_source:
        lines.append(f"data: evaluation on the test set {layout.test_source}: {len(s.test)} images")
    else:
        lines.append(
            f"data: no test set: {len(s.validation)} labeled images held out as the validation set "
            f"({config.data.validation_fraction:.0%} per class; no stage trains on them)"
        )
    if s.skipped:
        lines.append(f"data: {len(s.skipped)} unreadable files left out (data.bad_images=skip)")
    for key in why:
        value = _get(config, key)
        reason = "your setting" if _is_set(user, key) else why[key]
        lines.append(f"recipe: {key} = {value} ({reason})")
    lines.append(
        f"recipe: pretrain {config.pretrain.model.backbone}, {config.pretrain.epochs:g} epochs; "
        f"fine-tune from head layer 1; distill into {', '.join(config.distill_students) or 'nothing'} for "
        f"{config.distill.epochs} epochs; run_dir {config.run_dir}"
    )
    return lines


class FolderPipeline(Pipeline):
    """The pipeline on a user's folder, plus the deliverables: ``model/``, ``pool_predictions.csv`` and
    the report's account of which images were used for what."""

    def __init__(
        self,
        config: PipelineConfig,
        splits: FolderSplits,
        recipe: list[str],
        show_progress: bool = True,
        command: str | None = None,
    ) -> None:
        super().__init__(config, show_progress=show_progress, command=command)
        self.splits = splits
        self.recipe = recipe

    def final_checkpoint(self) -> tuple[str, Path]:
        """(what it is, checkpoint) of the final student: the first distilled student, else the model
        fine-tuned from ``distill_from_layer``."""
        for rec in self.records:
            if rec["kind"] == "distill":
                return rec["name"], Path(rec["run_dir"]) / "last.pt"
        slug = labels_slug(LABELS)
        layer = self.c.distill_from_layer if self.c.distill_from_layer in self.c.finetune_layers else None
        for rec in self.records:
            if rec["kind"] == "finetune" and (layer is None or f"layer{layer}" in rec["run_dir"]):
                return rec["name"], Path(rec["run_dir"]) / "last.pt"
        raise ConfigError(f"no fine-tuned or distilled model in {self.root} ({slug}): nothing to export")

    def finish(self, results: dict[str, Any]) -> dict[str, str]:
        from simclrv2.engine.deliver import export_model_dir, write_pool_predictions

        name, ckpt = self.final_checkpoint()
        self.say(f"pipeline: exporting the final model ({name}) to {self.root / 'model'}")
        data = self.c.distill.data
        kwargs: dict[str, Any] = dict(
            root=data.root, image_size=data.load_size, bad_images=data.bad_images, **folder_options(data)
        )
        evaluation = load_dataset("folder", "test", **kwargs)
        model_info = export_model_dir(ckpt, self.root / "model", evaluation, name)
        pool = load_dataset("folder", "unlabeled", **kwargs)
        pool_info = write_pool_predictions(
            ckpt, pool, self.splits, self.root / "pool_predictions.csv", self.c.distill, self.show_progress
        )
        results["model"] = model_info
        results["pool_predictions"] = pool_info
        results["data_summary"] = data_summary(self.splits)
        return {
            "Data: which images were used for what": data_section(self.splits, self.c),
            "Recipe (adapted to the data, said before any work)": "\n".join(f"- {x}" for x in self.recipe),
            "Your model": model_section(model_info, self.root),
            "Labels for the unlabeled pool": pool_section(pool_info),
        }


def data_summary(s: FolderSplits) -> dict[str, Any]:
    return {
        "root": str(s.layout.root),
        "layout": s.layout.layout,
        "classes": s.classes,
        "labeled_train_per_class": s.per_class(s.labeled_train),
        "validation_per_class": s.per_class(s.validation),
        "test_per_class": s.per_class(s.test),
        "test_source": s.layout.test_source,
        "unlabeled": len(s.unlabeled),
        "skipped": [{"path": p, "reason": r} for p, r in s.skipped],
    }


def data_section(s: FolderSplits, config: PipelineConfig) -> str:
    """Markdown: per class, how many labeled images were trained on and evaluated on; what each stage used."""
    train, val, test = s.per_class(s.labeled_train), s.per_class(s.validation), s.per_class(s.test)
    eval_col = "validation (held out)" if not s.layout.test_source else f"test ({s.layout.test_source})"
    evaluated = val if not s.layout.test_source else test
    rows = [f"| class | labeled, trained on | {eval_col} |", "|---|---:|---:|"]
    rows += [f"| {c} | {train[c]} | {evaluated[c]} |" for c in s.classes]
    rows.append(f"| **total** | **{sum(train.values())}** | **{sum(evaluated.values())}** |")
    n_train = len(s.labeled_train) + len(s.unlabeled)
    student = ", ".join(config.distill_students) or "no student"
    held = (
        f" The {len(s.validation)} validation images are held out of every stage (pretraining included)."
        if not s.layout.test_source
        else ""
    )
    text = [
        f"Folder `{s.layout.root}`, {s.layout.describe()}.",
        "",
        *rows,
        "",
        f"- Unlabeled pool: **{len(s.unlabeled)}** images.",
        f"- Pretraining: {n_train} images (the {len(s.labeled_train)} labeled training images and the pool; "
        "labels unused).",
        f"- Fine-tuning from head layer 1 and the supervised baseline: the {len(s.labeled_train)} labeled "
        "training images (column `all` of the table).",
        f"- Distillation ({student}): the same {n_train} images, labels unused.",
        f"- Evaluation: {sum(evaluated.values())} {eval_col} images.{held}",
    ]
    if s.skipped:
        text.append(f"- Left out: {len(s.skipped)} unreadable files (data.bad_images=skip), e.g. "
                    + ", ".join(f"`{s.relative(p)}`" for p, _ in s.skipped[:5]) + ".")  # fmt: skip
    return "\n".join(text)


def model_section(info: dict[str, Any], root: Path) -> str:
    files = ", ".join(f"`{os.path.relpath(p, root)}`" for p in info["files"].values())
    checks = "; ".join(f"{k}: max |logit difference| {v:.2g}" for k, v in info["checks"].items())
    return (
        f"{info['source']} ({info['arch']['backbone']}, {len(info['classes'])} classes), exported to "
        f"{files}. Input: uint8 RGB `(N, 3, {info['load_size']}, {info['load_size']})`; preprocessing "
        f"inside the model (centre crop to {info['image_size']} px). Checked against the checkpoint on "
        f"{info['checked_images']} images: {checks}.\n\n"
        f"```bash\nsimclrv2 predict --model {os.path.relpath(info['files']['checkpoint'], Path.cwd())} "
        "new_images/\n```\n\n"
        f"```python\nimport simclrv2\nclf = simclrv2.load_classifier({info['files']['checkpoint']!r})\n"
        "probs, idx = clf.predict(images, topk=3)\n```"
    )


def pool_section(info: dict[str, Any]) -> str:
    counts = ", ".join(f"{c} {n}" for c, n in info["predicted_per_class"].items())
    least = "\n".join(
        f"| `{r['path']}` | {r['prediction']} | {r['probability']:.3f} |" for r in info["least"]
    )
    return (
        f"`pool_predictions.csv`: the predicted class and its probability for each of the {info['rows']} "
        f"unlabeled images, least confident first (where labeling more pays most). Mean confidence "
        f"{info['mean_probability']:.3f}; predicted: {counts}."
        + (f" {info['unreadable']} files could not be decoded (listed last)." if info["unreadable"] else "")
        + "\n\nLeast confident:\n\n| image | prediction | probability |\n|---|---|---:|\n"
        + least
    )
