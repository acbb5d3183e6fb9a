"""Hyper-parameter choice on a validation split of the labeled subset (never the test split).

The supervised baseline and fine-tuning share this: every (LR multiplier, epochs) candidate is trained on the
labeled subset minus a class-balanced validation part and scored there; the best one is then retrained on the
whole labeled subset by the caller. Finished candidates are recorded in ``run_dir/grid.json`` as they finish,
so an interrupted search resumes without repeating them; each candidate runs in ``run_dir/grid/<key>/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from simclrv2.engine.runtime import write_json

__all__ = ["candidate_key", "candidates", "choose_on_validation", "near_chance", "search_verdict"]


def candidates(
    lr_grid: Sequence[float], epochs_grid: Sequence[int], default_epochs: int
) -> list[tuple[float, int]]:
    """Every (LR multiplier, epochs) pair, epochs-major, in the given orders (no epochs_grid: the default)."""
    epochs = list(epochs_grid) or [default_epochs]
    return [(float(m), int(e)) for e in epochs for m in lr_grid]


def candidate_key(lr_multiplier: float, epochs: int) -> str:
    return f"lr_x{lr_multiplier:g}_ep{epochs}"


def choose_on_validation(
    run_dir: Path,
    grid: Sequence[tuple[float, int]],
    train_once: Callable[[Path, float, int], dict[str, Any]],
    say: Callable[[str], None],
    stage: str,
) -> tuple[tuple[float, int], dict[str, Any]]:
    """The candidate with the highest validation top-1 (ties: the first in ``grid`` order) and the record of
    every candidate. ``train_once(dir, lr_multiplier, epochs)`` trains on the training part, evaluates on the
    validation part and returns the trainer's results. A single candidate is returned without training."""
    if len(grid) == 1:
        return grid[0], {}
    grid_path = run_dir / "grid.json"
    record: dict[str, Any] = json.loads(grid_path.read_text()) if grid_path.exists() else {}
    for mult, epochs in grid:
        key = candidate_key(mult, epochs)
        if key in record:
            continue  # finished before an interruption
        res = train_once(run_dir / "grid" / key, mult, epochs)
        record[key] = {
            "lr_multiplier": mult,
            "epochs": epochs,
            "validation_top1": res["test"]["top1"],
            "peak_lr": res["peak_lr"],
        }
        say(
            f"{stage}: LR x{mult:g} ({res['peak_lr']:.4g}), {epochs} epochs: "
            f"validation top-1 {res['test']['top1']:.2f}%"
        )
        write_json(grid_path, record)
    best_key = max(
        (candidate_key(m, e) for m, e in grid), key=lambda k: record[k]["validation_top1"]
    )  # max() keeps the first of equal scores
    best = (record[best_key]["lr_multiplier"], record[best_key]["epochs"])
    return best, record


def near_chance(top1: float, num_classes: int) -> bool:
    """True when a top-1 (%) is within a tenth of the way from chance to 100% (at least 5 points): for 10
    classes, 19% or less. A validation score there says the run learned (next to) nothing."""
    chance = 100.0 / max(num_classes, 1)
    return top1 <= chance + max(5.0, 0.1 * (100.0 - chance))


def search_verdict(record: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """``{"trained": bool, ...}`` for a validation search's record: not trained when every candidate stayed
    near chance on validation, with the best score and chance for the log, results.json and the report. A
    stage with no search (empty record) counts as trained."""
    scores = [float(c["validation_top1"]) for c in record.values()]
    if not scores or not all(near_chance(s, num_classes) for s in scores):
        return {"trained": True}
    best, chance = max(scores), 100.0 / num_classes
    return {
        "trained": False,
        "not_trained": (
            f"every one of the {len(scores)} candidates stayed near chance on validation (best "
            f"{best:.1f}%, chance {chance:.1f}%): not a number to compare; give it more epochs or a "
            "wider LR grid"
        ),
    }
