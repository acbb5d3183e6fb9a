"""Linear evaluation (logistic regression on cached features) and the kNN command."""

import json
from pathlib import Path

import torch

from simclrv2.cli import main
from simclrv2.engine.evaluate import topk_accuracy
from simclrv2.engine.linear_eval import fit_logistic_regression


def test_logistic_regression_separates_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(5, 16, generator=gen)
    labels = torch.arange(5).repeat(40)
    x = centers[labels] + torch.randn(200, 16, generator=gen)
    w, b = fit_logistic_regression(x, labels, 5, l2=1e-4)
    assert topk_accuracy(x @ w.T + b, labels)["top1"] > 95


def test_linear_eval_and_knn_beat_chance_on_synthetic_data(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    common = [
        "--pretrained", str(pretrained_checkpoint),
        "--set", "data.name=synthetic", "--set", "data.synthetic_size=200", "--set", "precision=fp32",
        "--set", f"run_dir={tmp_path}", "--set", "l2_grid=[1e-4, 1e-2]", "--set", "knn_k=20",
    ]  # fmt: skip
    assert main(["linear-eval", *common]) == 0
    res = json.loads((tmp_path / "linear_eval.json").read_text())
    assert res["test"]["top1"] > 30  # 10 classes: chance is 10%
    assert res["validation_size"] == 20 and res["num_labeled"] == 200
    assert set(res["validation_top1_by_l2"]) == {"0.0001", "0.01"}
    assert main(["knn", *common]) == 0
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["test"]["top1"] > 30


def test_augmented_linear_eval_trains_only_the_classifier(
    pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    from simclrv2.checkpoint import load_checkpoint

    args = [
        "linear-eval", "--augmented", "--pretrained", str(pretrained_checkpoint),
        "--set", "data.name=synthetic", "--set", "data.synthetic_size=96", "--set", "precision=fp32",
        "--set", f"run_dir={tmp_path}", "--set", "batch_size=32", "--set", "epochs=2",
    ]  # fmt: skip
    assert main(args) == 0
    res = json.loads((tmp_path / "linear_eval.json").read_text())
    # 96 images, 2 epochs, batch 32: the official rule's 96 * 2 // 32 + 1 steps
    assert res["stage"] == "linear_eval" and res["step"] == 7 and 0 <= res["test"]["top1"] <= 100
    after = load_checkpoint(tmp_path / "last.pt")["model"]
    before = load_checkpoint(pretrained_checkpoint)["model"]
    for key, value in after.items():
        if key.startswith("backbone."):  # frozen, BN running statistics included (eval mode)
            assert torch.equal(value, before["model." + key]), key
    assert after["classifier.weight"].abs().sum() > 0  # zero-initialised, then trained
