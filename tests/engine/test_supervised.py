"""Supervised baseline: LR chosen on a validation split of the labeled subset, then retrained on it."""

import json
from pathlib import Path

from simclrv2.cli import main
from simclrv2.data import load_dataset


def test_supervised_baseline_picks_lr_on_validation_only(tmp_path: Path) -> None:
    run = tmp_path / "sup"
    settings = [
        "data.name=synthetic", "data.synthetic_size=96", "batch_size=16", "epochs=1", "precision=fp32",
        "log_every_steps=1", "eval_batch_size=128", "lr_grid=[0.3, 3.0]", "val_fraction=0.25",
        f"run_dir={run}",
    ]  # fmt: skip
    argv = ["supervised", "--labels", "50%", "--model", "r18_0.25x_sk0"]
    assert main([*argv, *(a for s in settings for a in ("--set", s))]) == 0
    res = json.loads((run / "results.json").read_text())
    labeled = len((run / "label_indices.txt").read_text().split())
    assert res["num_labeled"] == labeled and res["num_train"] == labeled
    assert res["chosen_lr_multiplier"] in (0.3, 3.0) and set(res["lr_grid"]) == {"lr_x0.3_ep1", "lr_x3_ep1"}
    # The grid runs were evaluated on the validation part of the labeled subset, never on the test split.
    test_size = len(load_dataset("synthetic", "test"))
    assert res["validation_size"] + res["grid_train_size"] == labeled
    for mult in ("0.3", "3"):
        grid_eval = json.loads((run / "grid" / f"lr_x{mult}_ep1" / "eval.json").read_text())
        assert grid_eval["num_images"] == res["validation_size"] != test_size
    assert res["test"]["num_images"] == test_size and res["stage"] == "supervised"


def test_supervised_searches_epochs_too_and_trains_the_chosen_count(tmp_path: Path) -> None:
    run = tmp_path / "sup"
    settings = [
        "data.name=synthetic", "data.synthetic_size=64", "batch_size=16", "precision=fp32",
        "log_every_steps=1", "eval_batch_size=128", "lr_grid=[1.0]", "epochs_grid=[1, 2]",
        "val_fraction=0.25", f"run_dir={run}",
    ]  # fmt: skip
    argv = ["supervised", "--labels", "50%", "--model", "r18_0.125x_sk0"]
    assert main([*argv, *(a for s in settings for a in ("--set", s))]) == 0
    res = json.loads((run / "results.json").read_text())
    assert set(res["lr_grid"]) == {"lr_x1_ep1", "lr_x1_ep2"}
    scores = {k: v["validation_top1"] for k, v in res["lr_grid"].items()}
    best = max(["lr_x1_ep1", "lr_x1_ep2"], key=lambda k: scores[k])  # the first of equal scores
    assert res["chosen_epochs"] == res["lr_grid"][best]["epochs"] == res["epochs"]
