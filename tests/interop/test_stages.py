"""Converted checkpoints through the stages: finetune --pretrained, knn, distill --teacher, predict, export.

The TensorFlow checkpoint is the official network at width 0.25 (``tf_reference``, random weights), so that
every stage runs in seconds; the conversion path is the one of the released models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.inference import load_classifier

DATA = ["data.name=synthetic", "data.synthetic_size=64", "precision=fp32"]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def converted(tf, tmp_path_factory) -> dict[str, Path]:
    from tf_reference import Model  # beside this file

    root = tmp_path_factory.mktemp("published")
    tf_dir = root / "finetuned_10pct" / "r50_0.25x_sk1"
    Model(50, 0.25, 0.0625, 1000).save_tf1(str(tf_dir / "model.ckpt-100"))
    out = {"pretrained": root / "pretrained.pt", "teacher": root / "teacher.pt"}
    assert main(["convert", str(tf_dir), "--output", str(out["teacher"])]) == 0
    assert main(["convert", str(tf_dir), "-o", str(out["pretrained"]), "--category", "pretrained"]) == 0
    return out


def test_finetune_and_knn_from_a_converted_pretrained_checkpoint(converted, tmp_path):
    run = tmp_path / "ft"
    args = ["finetune", "--pretrained", str(converted["pretrained"]), "--labels", "25%", "--from-layer", "1"]
    extra = ["batch_size=16", "epochs=1", "max_steps=1", "log_every_steps=1", f"run_dir={run}"]
    assert main([*args, *_sets(*DATA, *extra)]) == 0
    ckpt = load_checkpoint(run / "last.pt", stage="finetune")
    assert ckpt["arch"]["backbone"] == "r50_0.25x_sk1" and ckpt["arch"]["tf_same_pool"]
    pre = load_checkpoint(converted["pretrained"])["model"]
    # One step from a zero-initialised classifier: only the classifier moves, the rest is the converted model.
    assert torch.equal(ckpt["model"]["backbone.stem.conv1.weight"], pre["model.backbone.stem.conv1.weight"])
    assert torch.equal(ckpt["model"]["head.layers.0.linear.weight"], pre["model.head.layers.0.linear.weight"])
    assert ckpt["model"]["classifier.weight"].abs().sum() > 0
    knn = tmp_path / "knn"
    assert main(["knn", "--pretrained", str(converted["pretrained"]), *_sets(*DATA, f"run_dir={knn}")]) == 0
    assert 0.0 <= json.loads((knn / "knn.json").read_text())["test"]["top1"] <= 100.0


def test_distill_from_a_converted_teacher(converted, tmp_path):
    run = tmp_path / "distill"
    args = ["distill", "--teacher", str(converted["teacher"]), "--student", "r18_0.125x_sk0"]
    extra = ["batch_size=32", "epochs=1", "max_steps=2", "optim.warmup_epochs=0.5", "log_every_steps=1"]
    extra.append(f"run_dir={run}")
    assert main([*args, *_sets(*DATA, *extra)]) == 0
    student = load_checkpoint(run / "last.pt", stage="distill")
    assert student["arch"]["num_classes"] == 1000


def test_predict_and_export_a_converted_classifier(converted, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(300, 400), (256, 256)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / f"{i}.png")
    assert main(["predict", str(images), "--model", str(converted["teacher"]), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    classifier = load_classifier(converted["teacher"])
    assert len(lines) == 2 and all(line.split("\t")[1].split(":")[0] in classifier.classes for line in lines)
    assert (classifier.image_size, classifier.load_size) == (224, 256) and classifier.classes[1] == "goldfish"
    out = tmp_path / "model.torchscript.pt"
    assert (
        main(["export", "--model", str(converted["teacher"]), "--format", "torchscript", "-o", str(out)]) == 0
    )
    traced = torch.jit.load(str(out))
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), classifier(x), rtol=1e-4, atol=1e-4)
