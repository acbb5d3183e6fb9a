"""Fine-tuning end to end through the CLI on synthetic data; exact resume."""

import json
from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.engine.finetune import build_model_from_checkpoint

TINY_FT = [
    "data.name=synthetic",
    "data.synthetic_size=96",
    "batch_size=16",
    "epochs=2",
    "precision=fp32",
    "log_every_steps=1",
    "eval_batch_size=128",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _ft(ckpt: Path, run: Path, *extra: str) -> list[str]:
    return [
        "finetune",
        "--pretrained",
        str(ckpt),
        "--labels",
        "25%",
        *_sets(*TINY_FT, f"run_dir={run}", *extra),
    ]


def test_finetune_end_to_end_and_exact_resume(
    pretrained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(_ft(pretrained_checkpoint, full)) == 0
    results = json.loads((full / "results.json").read_text())
    assert results["stage"] == "finetune" and results["from_layer"] == 1
    assert results["num_labeled"] == len((full / "label_indices.txt").read_text().split())
    official = results["num_train"] * results["epochs"] // results["batch_size"] + 1  # TF run.py's rule
    assert results["step"] == results["total_steps"] == official
    evaluation = json.loads((full / "eval.json").read_text())
    assert 0 <= evaluation["top1"] <= 100 and len(evaluation["per_class"]) == 10
    preds = json.loads((full / "predictions.json").read_text())
    assert len(preds["pred"]) == len(preds["label"]) == evaluation["num_images"]
    ckpt = load_checkpoint(full / "last.pt", stage="finetune")
    assert ckpt["arch"]["from_layer"] == 1
    assert not any(k.startswith("head.layers.1.") for k in ckpt["model"])
    assert build_model_from_checkpoint(ckpt).num_head_layers == 1

    # Interrupted after one step, then resumed: the same weights as the uninterrupted run.
    assert main(_ft(pretrained_checkpoint, cut, "max_steps=1")) == 0
    assert main([*_ft(pretrained_checkpoint, cut), "--resume"]) == 0
    a, b = ckpt["model"], load_checkpoint(cut / "last.pt")["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    assert torch.count_nonzero(a["classifier.weight"]) > 0

    # An existing run is not overwritten.
    assert main(_ft(pretrained_checkpoint, full)) == 2
    assert "already exists" in capsys.readouterr().err


def test_finetune_rejects_a_head_layer_beyond_the_head(
    pretrained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_ft(pretrained_checkpoint, tmp_path / "r"), "--from-layer", "4"]) == 2
    assert "3 layers" in capsys.readouterr().err


def test_finetune_chooses_lr_and_epochs_on_a_validation_split(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "grid"
    grid = ("lr_grid=[0.5, 2.0]", "epochs_grid=[1, 2]", "val_fraction=0.25")
    assert main(_ft(pretrained_checkpoint, run, *grid)) == 0
    res = json.loads((run / "results.json").read_text())
    keys = {"lr_x0.5_ep1", "lr_x2_ep1", "lr_x0.5_ep2", "lr_x2_ep2"}
    assert set(res["lr_grid"]) == keys
    labeled = res["num_labeled"]
    for key in keys:  # every candidate was scored on the validation part, never on the test split
        grid_eval = json.loads((run / "grid" / key / "eval.json").read_text())
        assert grid_eval["num_images"] < labeled < res["test"]["num_images"]
    best = max(
        sorted(keys, key=list(res["lr_grid"]).index), key=lambda k: res["lr_grid"][k]["validation_top1"]
    )
    assert (res["chosen_lr_multiplier"], res["chosen_epochs"]) == (
        res["lr_grid"][best]["lr_multiplier"],
        res["lr_grid"][best]["epochs"],
    )
    # The final run trains on every labeled image for the chosen number of epochs.
    assert res["num_train"] == labeled and res["epochs"] == res["chosen_epochs"]


def test_resume_without_a_checkpoint_or_an_interrupted_search_is_refused(
    pretrained_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*_ft(pretrained_checkpoint, tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("backbone", "base_lr"),
    [
        ("r50_1x_sk0", 0.005),  # SPEC 4: 0.005 * sqrt(B) for R50 1x
        ("r18_0.25x_sk0", 0.005),  # narrower than 1x, no SK: the R50 1x rule
        ("r101_1x_sk0", 0.005),
        ("r50_1x_sk1", 0.002),  # SK
        ("r50_2x_sk0", 0.002),  # wider
        ("r50_2x_sk1", 0.002),
        ("r152_3x_sk1", 0.002),
        ("r18_0.5x_sk1", 0.002),
    ],
)
def test_fine_tuning_lr_rule_by_architecture(backbone: str, base_lr: float) -> None:
    from simclrv2.engine.finetune import finetune_base_lr

    assert finetune_base_lr(backbone) == base_lr


def test_finetune_applies_the_lr_rule_unless_the_lr_is_set(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    """r18_0.25x_sk0: peak LR 0.005 * sqrt(16) by default; an explicit optim.base_lr wins."""
    assert main(_ft(pretrained_checkpoint, tmp_path / "rule", "max_steps=1")) == 0
    rule = json.loads((tmp_path / "rule" / "results.json").read_text())
    assert rule["peak_lr"] == pytest.approx(0.005 * 16**0.5) and rule["batch_size"] == 16
    assert load_checkpoint(tmp_path / "rule" / "last.pt")["config"]["optim"]["base_lr"] == 0.005
    assert main(_ft(pretrained_checkpoint, tmp_path / "set", "max_steps=1", "optim.base_lr=0.01")) == 0
    chosen = json.loads((tmp_path / "set" / "results.json").read_text())
    assert chosen["peak_lr"] == pytest.approx(0.01 * 16**0.5)


def test_warm_start_fits_the_classifier_before_fine_tuning(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    """``warm_start: true``: the classifier starts as the logistic regression of the labels on the frozen
    features (at a vanishing LR one step leaves it there), not at the paper's zero; off by default."""
    from simclrv2.config import FinetuneConfig

    assert FinetuneConfig().warm_start is False
    tiny_lr = ("optim.base_lr=1e-12", "max_steps=1")
    assert main(_ft(pretrained_checkpoint, tmp_path / "cold", *tiny_lr)) == 0
    assert main(_ft(pretrained_checkpoint, tmp_path / "warm", *tiny_lr, "warm_start=true")) == 0
    cold = load_checkpoint(tmp_path / "cold" / "last.pt")["model"]["classifier.weight"]
    warm = load_checkpoint(tmp_path / "warm" / "last.pt")["model"]["classifier.weight"]
    assert cold.abs().max() < 1e-6 < warm.abs().max()
