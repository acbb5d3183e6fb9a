"""The whole SimCLRv2 recipe in one command: pretrain -> linear eval -> fine-tune -> distill -> supervised
baseline -> report (SPEC sections 2, 4, 6 and the paper's label-efficiency table).

Every stage writes into its own directory under ``run_dir`` and is resumable on its own: a stage whose
``results.json`` exists is skipped (its numbers are read back), a stage with a ``last.pt`` but no results
resumes, anything else starts. A stage directory whose ``config.yaml`` holds other settings than the ones
the stage would run with now raises :class:`ConfigError` instead of being reused. All stages after
pretraining share one label subset per (labels, seed), saved once under ``run_dir/labels/``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclrv2 import distributed
from simclrv2.config import ConfigError, PipelineConfig, to_dict
from simclrv2.data import load_dataset
from simclrv2.engine.runtime import device_type, echo, write_json

STAGE_ORDER = ("pretrain", "linear_eval", "finetune", "distill", "supervised")


def labels_slug(labels: str) -> str:
    """A directory name for a label spec: ``1%`` -> ``1pct``, ``10/class`` -> ``10-per-class``."""
    slug = labels.replace("%", "pct").replace("/class", "-per-class")
    return re.sub(r"[^A-Za-z0-9._-]", "_", slug)


# Settings that do not change what a stage computes (where and how fast it runs, how often it logs) or that
# the pipeline derives from run_dir (paths): a finished or interrupted stage may be reused across them.
_REUSABLE_ACROSS = frozenset({
    "run_dir", "pretrained", "teacher", "label_index_file", "device", "compile", "channels_last",
    "log_every_steps", "checkpoint_every_steps", "eval_batch_size", "eval.batch_size",
    "data.download", "data.num_workers", "data.cache_gb",
})  # fmt: skip
# data.root too, except for a user's images (imagefolder, folder), where the folder is the data set itself
_FOLDER_DATASETS = ("imagefolder", "folder")
# Left unset (None), these are resolved by the stage, which saves the value it chose (fine-tuning: the SPEC 4
# LR for the architecture, the head layer for the label fraction); that value follows from the other settings.
_RESOLVED_BY_STAGE = frozenset({"optim.base_lr", "from_layer"})


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix[:-1]: values}
    return {k: v for key, sub in values.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}


def _settings_changed(run_dir: Path, config: Any) -> list[tuple[str, Any, Any]]:
    """``(key, saved, now)`` for every setting in which ``config`` differs from the one the stage in
    ``run_dir`` ran with (its ``config.yaml``), ignoring :data:`_REUSABLE_ACROSS` and keys that only one
    side has (a file written by an older version). A :data:`_RESOLVED_BY_STAGE` setting left unset now is
    not compared (the file holds what the stage resolved it to). Path-valued ``student_init`` counts as the
    same value."""
    import yaml

    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        return []
    saved = _flatten(yaml.safe_load(saved_file.read_text()) or {})
    now = _flatten(json.loads(json.dumps(to_dict(config))))  # tuples -> lists, as YAML has them

    def norm(key: str, value: Any) -> Any:
        named = ("scratch", "teacher", "pretrained")
        if key == "student_init" and isinstance(value, str) and value not in named:
            return "<a checkpoint>"
        return value

    ignore = set(_REUSABLE_ACROSS)
    if now.get("data.name") not in _FOLDER_DATASETS:
        ignore.add("data.root")
    return [
        (key, saved[key], now[key])
        for key in now
        if key in saved
        and key not in ignore
        and not (key in _RESOLVED_BY_STAGE and now[key] is None)
        and norm(key, saved[key]) != norm(key, now[key])
    ]


def _stage_dir_state(run_dir: Path, results_name: str) -> str:
    if (run_dir / results_name).is_file():
        return "done"
    if (run_dir / "last.pt").is_file():
        return "resume"
    return "new"


class Pipeline:
    """Runs the stages in order, records every number, then writes ``results.json`` and the report."""

    def __init__(
        self, config: PipelineConfig, show_progress: bool = True, command: str | None = None
    ) -> None:
        self.c = config
        self.command = command
        self.root = Path(config.run_dir)
        self.show_progress = show_progress
        self.records: list[dict[str, Any]] = []
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds of this process (all threads) per kind of stage

    def say(self, message: str) -> None:
        if self.show_progress:
            echo(message)

    def _run_stage(
        self,
        kind: str,
        name: str,
        run_dir: Path,
        fn: Callable[[bool], dict[str, Any]],
        results_name: str = "results.json",
        config: Any = None,
        **meta: Any,
    ) -> dict[str, Any]:
        state = _stage_dir_state(run_dir, results_name)
        changed = _settings_changed(run_dir, config) if state != "new" and config is not None else []
        if changed:
            # Reusing it would put numbers from other settings under this config's name in the report.
            key, saved, now = changed[0]
            more = f" and {len(changed) - 1} other setting(s)" if len(changed) > 1 else ""
            raise ConfigError(
                f"{run_dir} holds a {'finished' if state == 'done' else 'started'} {name} run with other "
                f"settings ({key}: {saved!r} there, {now!r} now{more}), so its results are not this "
                f"config's. Give this run its own directory (--set run_dir=...), or delete {run_dir} to "
                "run that stage again."
            )
        if state == "done":
            self.say(f"pipeline: {name}: finished earlier, reading {run_dir / results_name}")
            results = json.loads((run_dir / results_name).read_text())
        else:
            self.say(f"pipeline: {name}: {'resuming' if state == 'resume' else 'starting'} in {run_dir}")
            t0, c0 = time.time(), time.process_time()
            results = fn(state == "resume")
            self.wall[kind] = self.wall.get(kind, 0.0) + time.time() - t0
            self.cpu[kind] = self.cpu.get(kind, 0.0) + time.process_time() - c0
        self.records.append({"kind": kind, "name": name, "run_dir": str(run_dir), **meta, "results": results})
        return results

    def label_file(self, labels: str, seed: int) -> str:
        return str(self.root / "labels" / f"{labels_slug(labels)}_seed{seed}.txt")

    # -- the stages -----------------------------------------------------------------------------------------

    def pretrain(self) -> Path:
        from simclrv2.engine.pretrain import pretrain

        cfg = dataclasses.replace(self.c.pretrain, run_dir=str(self.root / "pretrain"), seed=self.c.seed)
        cfg.validate()
        self._run_stage(
            "pretrain", "pretrain", Path(cfg.run_dir), lambda resume: pretrain(cfg, resume=resume), config=cfg
        )
        return Path(cfg.run_dir) / "last.pt"

    def linear_eval(self, pretrained: Path, labels: str, seed: int) -> None:
        from simclrv2.engine.linear_eval import linear_eval

        run_dir = self.root / "linear_eval" / labels_slug(labels) / f"seed{seed}"
        cfg = dataclasses.replace(
            self.c.linear_eval,
            run_dir=str(run_dir),
            seed=seed,
            pretrained=str(pretrained),
            labels=labels,
            label_index_file=self.label_file(labels, seed),
        )
        cfg.validate()
        self._run_stage(
            "linear_eval", f"linear eval {labels} seed {seed}", run_dir, lambda _resume: linear_eval(cfg),
            results_name="linear_eval.json", config=cfg, row="Linear eval", labels=labels, seed=seed,
        )  # fmt: skip

    def finetune(self, pretrained: Path, labels: str, layer: int, seed: int) -> Path:
        from simclrv2.engine.finetune import finetune

        run_dir = self.root / "finetune" / labels_slug(labels) / f"layer{layer}" / f"seed{seed}"
        cfg = dataclasses.replace(
            self.c.finetune,
            run_dir=str(run_dir),
            seed=seed,
            pretrained=str(pretrained),
            labels=labels,
            from_layer=layer,
            label_index_file=self.label_file(labels, seed),
        )
        cfg.validate()
        self._run_stage(
            "finetune", f"fine-tune {labels} from layer {layer} seed {seed}", run_dir,
            lambda resume: finetune(cfg, resume=resume, show_progress=self.show_progress),
            config=cfg, row=f"Fine-tuned (layer {layer})", labels=labels, seed=seed,
        )  # fmt: skip
        return run_dir / "last.pt"

    def distill(
        self,
        teacher: Path,
        labels: str,
        student: str,
        seed: int,
        pretrained: Path,
        student_init: Path | None = None,
    ) -> None:
        """Distil ``teacher`` into ``student``. A self-distilled student starts from ``pretrained`` or from
        the teacher's backbone when ``distill_init`` says so; any student starts from ``student_init`` when
        given (a checkpoint of its backbone)."""
        from simclrv2.engine.distill import distill

        slug = "self" if student == "same" else student
        run_dir = self.root / "distill" / labels_slug(labels) / slug / f"seed{seed}"
        cfg = dataclasses.replace(
            self.c.distill, run_dir=str(run_dir), seed=seed, teacher=str(teacher), student=student,
        )  # fmt: skip
        if student in ("same", self.c.pretrain.model.backbone):
            init = self.c.distill_init
            cfg.student_init = str(pretrained) if init == "pretrained" else init
        else:
            cfg.student_init = "scratch"
        if student_init is not None:
            cfg.student_init = str(student_init)
        cfg.validate()
        row = "Self-distilled" if student == "same" else f"Distilled into {student}"
        self._run_stage(
            "distill", f"distill {labels} -> {slug} seed {seed}", run_dir,
            lambda resume: distill(cfg, resume=resume, show_progress=self.show_progress),
            config=cfg, row=row, labels=labels, seed=seed,
        )  # fmt: skip

    def supervised(self, labels: str, seed: int) -> None:
        from simclrv2.engine.supervised import supervised

        run_dir = self.root / "supervised" / labels_slug(labels) / f"seed{seed}"
        cfg = dataclasses.replace(
            self.c.supervised,
            run_dir=str(run_dir),
            seed=seed,
            labels=labels,
            label_index_file=self.label_file(labels, seed),
            backbone=self.c.pretrain.model.backbone,
            small_images=self.c.pretrain.model.small_images,
        )
        cfg.validate()
        self._run_stage(
            "supervised", f"supervised {labels} seed {seed}", run_dir,
            lambda resume: supervised(cfg, resume=resume, show_progress=self.show_progress),
            config=cfg, row="Supervised (labels only)", labels=labels, seed=seed,
        )  # fmt: skip

    # -- everything ---------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every stage, then results.json and the report. Under torchrun every rank runs this; each stage
        distributes its own work and ends with a barrier, and rank 0 alone writes the pipeline's files."""
        c = self.c
        distributed.init_from_env(device_type(c.pretrain.device))
        t_start = time.time()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "labels").mkdir(exist_ok=True)
        from simclrv2.config import save_config

        config_file = self.root / "config.yaml"
        if not config_file.is_file():  # a rerun rewrites it once its stages have been accepted (below)
            save_config(c, config_file)
        pretrained = self.pretrain()
        for labels in c.labels:
            for seed in c.label_seeds:
                if c.run_linear_eval:
                    self.linear_eval(pretrained, labels, seed)
                teachers = {
                    layer: self.finetune(pretrained, labels, layer, seed) for layer in c.finetune_layers
                }
                if c.distill_students:
                    layer = c.distill_from_layer
                    teacher = teachers.get(layer) or self.finetune(pretrained, labels, layer, seed)
                    for student in c.distill_students:
                        self.distill(teacher, labels, student, seed, pretrained)
                if c.run_supervised:
                    self.supervised(labels, seed)
        results = self.collect()
        results["command"] = self.command
        sections = self.finish(results) if distributed.is_main_process() else {}
        results["wall_seconds"] = {
            **{k: round(v, 1) for k, v in self.wall.items()},
            "total": time.time() - t_start,
        }
        results["cpu_seconds"] = {k: round(v, 1) for k, v in self.cpu.items()}
        save_config(c, config_file)
        write_json(self.root / "results.json", results)
        if distributed.is_main_process():
            report = write_pipeline_report(self.root, results, sections)
            self.say(f"pipeline: report written to {report}")
        distributed.barrier()
        return results

    def finish(self, results: dict[str, Any]) -> dict[str, str]:
        """After the stages, before results.json and the report (main process only): a subclass may add to
        ``results`` and return extra report sections (heading -> markdown). Nothing here."""
        return {}

    def collect(self) -> dict[str, Any]:
        """The label-efficiency table (mean and std over seeds) and every stage's numbers."""
        cells: dict[str, dict[str, list[float]]] = {}
        untrained: set[tuple[str, str]] = set()
        for rec in self.records:
            if "row" not in rec:
                continue
            top1 = _top1(rec["results"])
            if top1 is None:
                continue
            cells.setdefault(rec["row"], {}).setdefault(rec["labels"], []).append(top1)
            if rec["results"].get("trained") is False:
                untrained.add((rec["row"], rec["labels"]))
        table = {
            row: {
                labels: {**_mean_std(values), **({"trained": False} if (row, labels) in untrained else {})}
                for labels, values in by_labels.items()
            }
            for row, by_labels in cells.items()
        }
        pre = next(r for r in self.records if r["kind"] == "pretrain")["results"]
        config = to_dict(self.c)
        evaluated_on = {r["results"].get("evaluated_on") for r in self.records} - {None}
        return {
            "config": config,
            "dataset": self.c.data.name,
            "evaluated_on": evaluated_on.pop() if len(evaluated_on) == 1 else "test",
            "columns": list(self.c.labels),
            "table": table,
            "summary": pipeline_summary(table, list(self.c.labels), config),
            "pretrain": {
                k: pre.get(k) for k in ("knn", "online_probe", "images_per_sec", "wall_seconds", "step")
            },
            "runs": self.records,
            "machine": machine_description(),
        }


def _top1(results: dict[str, Any]) -> float | None:
    for key in ("test", "linear"):
        block = results.get(key)
        if isinstance(block, dict) and "top1" in block:
            return float(block["top1"])
    return None


def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0, "n": len(arr)}


def machine_description() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


SUPERVISED_ROW = "Supervised (labels only)"


def _trained_mean(table: dict[str, Any], row: str, column: str) -> float | None:
    cell = table.get(row, {}).get(column)
    if cell is None or cell.get("trained") is False:
        return None
    return float(cell["mean"])


def summary_sentence(table: dict[str, Any], columns: list[str], method_row: str) -> str:
    """One sentence, generated from the table, on what it shows: where the pretrained and fine-tuned
    network (``method_row``) beats the same network trained on the labels alone, and by how much."""
    wins: list[str] = []
    losses: list[str] = []
    missing: list[str] = []
    for col in columns:
        ours, sup = _trained_mean(table, method_row, col), _trained_mean(table, SUPERVISED_ROW, col)
        if ours is None or sup is None:
            missing.append(col)
            continue
        part = f"{col} ({ours:.1f}% vs {sup:.1f}%, {ours - sup:+.1f} points)"
        (wins if ours > sup else losses).append(part)
    parts = []
    if wins:
        parts.append(f"beats the same network trained on the labels alone at {_join(wins)}")
    if losses:
        parts.append(f"{'but ' if wins else ''}does not beat it at {_join(losses)}")
    if not parts:
        return f"{method_row}: there is no trained supervised baseline to compare with ({_join(missing)})."
    layer = re.search(r"layer (-?\d+)", method_row)
    how = (
        ""
        if layer is None
        else " from the backbone output"
        if layer[1] == "0"
        else f" from head layer {layer[1]}"
    )
    sentence = f"Pretraining without labels, then fine-tuning{how}, " + ", ".join(parts)
    if missing:
        sentence += f"; no comparison at {_join(missing)} (a row missing or not trained)"
    return sentence + "."


def pipeline_summary(table: dict[str, Any], columns: list[str], config: dict[str, Any]) -> str | None:
    """:func:`summary_sentence` for the fine-tuned row that distillation starts from (SimCLRv2's layer 1)."""
    layer = config.get("distill_from_layer", 1)
    rows = [row for row in table if row.startswith("Fine-tuned (layer")]
    method = f"Fine-tuned (layer {layer})" if f"Fine-tuned (layer {layer})" in table else None
    method = method or (rows[-1] if rows else None)
    return summary_sentence(table, columns, method) if method else None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _final_run(results: dict[str, Any]) -> dict[str, Any] | None:
    """The recipe's final model for the figures: the self-distilled student (else the fine-tuned teacher)
    at the smallest label count, the regime the method is for; not whichever row scored highest."""
    columns = results["columns"]
    for kind in ("distill", "finetune"):
        for col in columns:
            for rec in results["runs"]:
                ok = rec["kind"] == kind and rec.get("labels") == col and rec["results"].get("trained", True)
                if ok and (Path(rec["run_dir"]) / "predictions.json").is_file():
                    return rec
    return None


def write_pipeline_report(
    root: Path, results: dict[str, Any], extra_sections: dict[str, str] | None = None
) -> Path:
    """report.md + figures: the label-efficiency table and chart, training curves, confusion matrix and
    a grid of test images with the best model's predictions; ``extra_sections`` come first after them."""
    from simclrv2 import report
    from simclrv2.data.datasets import folder_options

    split = results.get("evaluated_on") or "test"  # "validation": a folder's held-out labeled images
    fig_dir = root / "figures"
    columns = results["columns"]
    table = {
        # mean +- std across seeds; a single run is shown as a plain value (no misleading "+- 0.0"); a stage
        # that stayed at chance on validation is not a number to compare
        row: {
            col: "not trained"
            if v.get("trained") is False
            else (v["mean"], v["std"])
            if v["n"] > 1
            else v["mean"]
            for col, v in cells.items()
        }
        for row, cells in results["table"].items()
    }
    figures: dict[str, Path] = {}
    figures[f"Top-1 {split} accuracy by label fraction"] = report.plot_label_efficiency(
        table, fig_dir / "label_efficiency.png", columns=columns
    )
    curves = {"pretrain": root / "pretrain" / "metrics.jsonl"}
    for rec in results["runs"]:
        if rec["kind"] in ("finetune", "distill") and rec.get("seed") == results["config"]["label_seeds"][0]:
            curves[rec["name"]] = Path(rec["run_dir"]) / "metrics.jsonl"
    figures["Training curves"] = report.plot_training_curves(curves, fig_dir / "training_curves.png")
    sections: dict[str, str] = dict(extra_sections or {})
    final = _final_run(results)
    if final is not None:
        preds = json.loads((Path(final["run_dir"]) / "predictions.json").read_text())
        classes = preds["classes"]
        cm = report.confusion_matrix(preds["label"], preds["pred"], len(classes))
        figures[f"Confusion matrix: {final['name']}"] = report.plot_confusion_matrix(
            cm, classes, fig_dir / "confusion_matrix.png", title=f"{final['name']} ({split})"
        )
        data = results["config"]["data"]
        test = load_dataset(
            data["name"], "test", root=data["root"], image_size=data["load_size"],
            bad_images=data.get("bad_images", "fail"),
            **folder_options(data),
        )  # fmt: skip
        n = min(32, len(preds["label"]))
        if test.images is not None:
            images = test.images[:n]
        else:
            images = torch.stack([test.dataset[i][0] for i in range(n)])  # type: ignore[index]
        caption = f"{split.capitalize()} images with predictions: {final['name']}"
        figures[caption] = report.plot_prediction_grid(
            images, preds["label"][:n], preds["pred"][:n], classes, fig_dir / "predictions.png"
        )
        sections["Final model"] = (
            f"{final['name']}: {split} top-1 {_top1(final['results']):.2f}% (`{final['run_dir']}`), "
            "the recipe's last stage at the smallest label count (the figures above show it)."
        )
    untrained = [
        f"{row} at {col}" for row, cells in results["table"].items() for col, v in cells.items()
        if v.get("trained") is False
    ]  # fmt: skip
    if untrained:
        sections["Not trained"] = (
            f"{_join(untrained)}: every validation candidate stayed near chance, so the table shows no "
            "number (see that stage's results.json, `not_trained`)."
        )
    pre = results["pretrain"]
    knn = pre.get("knn") or {}
    sections["Pretraining"] = (
        f"kNN top-1 {knn.get('top1', float('nan')):.2f}% after {pre.get('step')} steps at "
        f"{(pre.get('images_per_sec') or 0):.0f} images/s."
    )
    wall = results.get("wall_seconds", {})
    sections["Wall time (s)"] = "\n".join(f"- {k}: {v:.0f}" for k, v in wall.items())
    m = results["machine"]
    sections["Machine"] = f"{m['cpu']}, {m['threads']} threads, CUDA: {m['cuda']}, torch {m['torch']}."
    summary = results.get("summary") or pipeline_summary(results["table"], columns, results["config"])
    return report.write_report(
        root,
        title=f"SimCLRv2 on {results['dataset']}",
        table=table,
        columns=columns,
        figures=figures,
        sections=sections,
        command=results.get("command"),
        summary=summary,
    )
