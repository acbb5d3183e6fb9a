"""Using a trained classifier: load_classifier, `simclrv2 predict`, `simclrv2 export` (synthetic data)."""

import csv
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import simclrv2
from simclrv2.checkpoint import CheckpointError, load_checkpoint
from simclrv2.cli import main
from simclrv2.data import center_crop, load_dataset
from simclrv2.data.datasets import decode_rgb
from simclrv2.engine.classify import predict_logits
from simclrv2.engine.finetune import build_model, build_model_from_checkpoint, model_arch
from simclrv2.inference import (
    ImageClassifier,
    Preprocess,
    export_torchscript,
    inference_metadata,
    load_classifier,
)

HAVE_SAFETENSORS = importlib.util.find_spec("safetensors") is not None

TINY_FT = [
    "data.name=synthetic",
    "data.synthetic_size=96",
    "batch_size=16",
    "epochs=1",
    "max_steps=2",
    "precision=fp32",
    "log_every_steps=1",
    "eval_batch_size=128",
]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def classifier_checkpoint(pretrained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of a 2-step fine-tuning run on synthetic 32 px data (10 classes)."""
    run = tmp_path_factory.mktemp("finetune") / "run"
    argv = ["finetune", "--pretrained", str(pretrained_checkpoint), "--labels", "25%"]
    assert main([*argv, *_sets(*TINY_FT, f"run_dir={run}")]) == 0
    return run / "last.pt"


@pytest.fixture(scope="module")
def classifier(classifier_checkpoint: Path) -> ImageClassifier:
    return simclrv2.load_classifier(classifier_checkpoint)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three readable PNGs (gray, RGBA, RGB; sizes differ; one in a subfolder), a broken PNG, a text file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8), mode="L").save(root / "a_gray.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), mode="RGBA").save(root / "b_rgba.png")
    Image.fromarray(rng.integers(0, 256, (50, 20, 3), dtype=np.uint8), mode="RGB").save(root / "sub/c.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return root


def test_checkpoint_records_what_inference_needs(classifier_checkpoint: Path) -> None:
    ckpt = load_checkpoint(classifier_checkpoint)
    assert ckpt["classes"] == [f"class{i}" for i in range(10)]
    assert ckpt["image_size"] == ckpt["load_size"] == 32
    # An older checkpoint without them: derived from the config's data section.
    for key in ("classes", "image_size", "load_size"):
        del ckpt[key]
    expected = {"classes": [f"class{i}" for i in range(10)], "image_size": 32, "load_size": 32}
    assert inference_metadata(ckpt) == expected
    ckpt["config"]["data"]["name"] = "cifar10"
    assert inference_metadata(ckpt)["classes"] == [str(i) for i in range(10)]
    ckpt["config"] = {}
    with pytest.raises(CheckpointError, match="image_size="):
        inference_metadata(ckpt)
    assert inference_metadata(ckpt, image_size=28)["load_size"] == 28


def test_load_classifier_matches_evaluation_logits(
    classifier: ImageClassifier, classifier_checkpoint: Path
) -> None:
    assert not classifier.training and classifier.image_size == 32 and len(classifier.classes) == 10
    assert classifier.arch["num_classes"] == 10
    test = load_dataset("synthetic", "test", synthetic_size=64, seed=0)
    model = build_model_from_checkpoint(classifier_checkpoint)
    expected, _ = predict_logits(model, test, torch.device("cpu"), crop_size=32, show_progress=False)
    assert expected.abs().max() > 0  # the classifier was trained (zero-initialised otherwise)
    assert test.images is not None
    with torch.no_grad():
        got = classifier(test.images)
        as_float = classifier(test.images.float() / 255.0)
        as_list = classifier(list(test.images[:5]))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(as_float, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(as_list, expected[:5], atol=1e-4, rtol=1e-4)
    probs, idx = classifier.predict(test.images[:8], topk=3)
    assert probs.shape == idx.shape == (8, 3)
    assert torch.equal(idx[:, 0], expected[:8].argmax(1))
    assert (probs[:, :-1] >= probs[:, 1:]).all()
    with pytest.raises(ValueError, match="batch"):
        classifier(test.images[0])


def test_preprocess_is_the_evaluation_centre_crop() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 48, 48), generator=gen, dtype=torch.uint8)
    pre = Preprocess(image_size=40, load_size=48)  # > 32 px: 0.875 centre crop, bicubic to 40
    torch.testing.assert_close(pre(images), center_crop(images, 40), atol=1e-5, rtol=0)
    assert pre(images).shape == (3, 3, 40, 40)
    # Other sizes: shorter side to load_size, centred square, then the same crop.
    wide = torch.rand(2, 3, 48, 80, generator=gen)
    torch.testing.assert_close(pre(wide), center_crop(wide[:, :, :, 16:64], 40))
    out = pre(torch.rand(1, 3, 30, 20, generator=gen))
    assert out.shape == (1, 3, 40, 40) and out.min() >= 0 and out.max() <= 1


def test_predict_prints_topk_per_image_and_skips_unreadable(
    classifier_checkpoint: Path,
    classifier: ImageClassifier,
    image_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["predict", "--model", str(classifier_checkpoint), str(image_dir), "--topk", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    names = ["a_gray.png", "b_rgba.png", "sub/c.png"]
    assert [line.split("\t")[0] for line in lines] == [str(image_dir / n) for n in names]
    images = [decode_rgb(image_dir / n) for n in names]
    probs, idx = classifier.predict(images, topk=3)
    for line, p, i in zip(lines, probs.tolist(), idx.tolist(), strict=True):
        pairs = [item.rsplit(":", 1) for item in line.split("\t")[1].split(" ")]
        assert [c for c, _ in pairs] == [classifier.classes[j] for j in i]
        assert [float(v) for _, v in pairs] == pytest.approx(p, abs=1e-4)
    assert "broken.png" in err and "skipped 1 of 4" in err

    csv_path, json_path = image_dir.parent / "p.csv", image_dir.parent / "out/p.json"
    model = ["--model", str(classifier_checkpoint)]
    assert (
        main(["predict", *model, str(image_dir / "sub"), str(image_dir / "a_gray.png"), "-o", str(csv_path)])
        == 0
    )
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 2 * 5 and rows[0].keys() == {"path", "rank", "class", "probability"}
    assert [r["rank"] for r in rows[:5]] == ["1", "2", "3", "4", "5"]
    assert rows[0]["path"] == str(image_dir / "sub/c.png") and rows[5]["path"] == str(
        image_dir / "a_gray.png"
    )
    assert main(["predict", *model, str(image_dir), "--topk", "20", "--output", str(json_path)]) == 0
    payload = json.loads(json_path.read_text())
    assert len(payload["predictions"]) == 3 and len(payload["predictions"][0]["classes"]) == 10
    assert sum(payload["predictions"][0]["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert payload["skipped"][0]["path"].endswith("broken.png")


def test_torchscript_export_loads_without_simclrv2(
    classifier_checkpoint: Path,
    classifier: ImageClassifier,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["export", "--model", str(classifier_checkpoint), "--format", "torchscript"]) == 0
    path = classifier_checkpoint.parent / "model.torchscript.pt"
    assert "(N, 3, 32, 32)" in capsys.readouterr().out and path.is_file()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (5, 3, 32, 32), generator=gen, dtype=torch.uint8)
    torch.save(x, tmp_path / "x.pt")
    # A fresh interpreter in which simclrv2 cannot be imported.
    code = (
        "import sys, json; sys.modules['simclrv2'] = None; import torch; "
        f"extra = {{'simclrv2.json': ''}}; m = torch.jit.load({str(path)!r}, _extra_files=extra); "
        f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), {str(tmp_path / 'y.pt')!r}); "
        "print(json.loads(extra['simclrv2.json'])['classes'][0])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "class0"
    with torch.no_grad():
        expected = classifier(x)
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, atol=1e-4, rtol=0)

    # Another input spec: one channel, float 0..1, 40 px (resized inside the traced graph).
    other = export_torchscript(classifier, tmp_path / "gray.pt", size=40, channels=1, dtype=torch.float32)
    with pytest.warns(FutureWarning):
        traced = torch.jit.load(str(other))
    gray = torch.rand(3, 1, 40, 40, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(traced(gray), classifier(gray), atol=1e-4, rtol=0)

    # An existing export is not overwritten without --force.
    assert main(["export", "--model", str(classifier_checkpoint), "--format", "torchscript"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", "--model", str(classifier_checkpoint), "--format", "torchscript", "--force"]) == 0


@pytest.mark.parametrize("command", ["predict", "export"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and ("IMAGE_OR_FOLDER" in out if command == "predict" else "torchscript" in out)


def test_bad_inputs_exit_2_with_a_message(
    classifier_checkpoint: Path,
    pretrained_checkpoint: Path,
    image_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = ["--model", str(classifier_checkpoint)]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/x.jpg").write_bytes(b"nope")
    cases = [
        (["predict", *model, str(tmp_path / "missing.png")], "does not exist"),
        (["predict", *model, str(tmp_path / "empty")], "no images"),
        (["predict", *model, str(tmp_path / "bad")], "could be read"),
        (["predict", *model, str(image_dir), "--output", str(tmp_path / "p.txt")], ".csv or .json"),
        (["predict", *model, str(image_dir), "--topk", "0"], ">= 1"),
        (["predict", "--model", str(tmp_path / "none.pt"), str(image_dir)], "does not exist"),
        (
            ["predict", "--model", str(pretrained_checkpoint), str(image_dir)],
            "finetune, supervised or distill",
        ),
        (["export", "--model", str(tmp_path / "none.pt"), "--format", "torchscript"], "does not exist"),
    ]
    if not HAVE_SAFETENSORS:
        cases.append((["export", *model, "--format", "safetensors"], "pip install safetensors"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"simclrv2 {argv[0]}: error:" in err and message in err, (argv, err)


def _check_safetensors_round_trip(
    classifier_checkpoint: Path, classifier: ImageClassifier, out: Path
) -> None:
    argv = ["export", "--model", str(classifier_checkpoint), "--format", "safetensors", "-o", str(out)]
    assert main(argv) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["arch"] == classifier.arch and meta["classes"] == classifier.classes
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for path in (out, out.with_suffix(".json")):
        loaded = load_classifier(path)
        assert loaded.classes == classifier.classes and loaded.image_size == 32 and not loaded.training
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), classifier(x), atol=0, rtol=0)


@pytest.mark.skipif(not HAVE_SAFETENSORS, reason="the optional safetensors package is not installed")
def test_safetensors_round_trip(
    classifier_checkpoint: Path, classifier: ImageClassifier, tmp_path: Path
) -> None:
    _check_safetensors_round_trip(classifier_checkpoint, classifier, tmp_path / "model.safetensors")


def test_safetensors_code_path_with_a_stand_in_package(
    classifier_checkpoint: Path, classifier: ImageClassifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our side of the safetensors export (file pair, metadata, strict reload) with a stand-in for the
    package that enforces its documented rules (contiguous, unshared tensors; str metadata)."""

    def save_file(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in (metadata or {}).items())
        pointers = [t.untyped_storage().data_ptr() for t in tensors.values() if t.numel()]
        assert all(t.is_contiguous() for t in tensors.values()) and len(set(pointers)) == len(pointers)
        torch.save(dict(tensors), filename)

    def load_file(filename: str, device: str = "cpu") -> dict:
        with open(filename, "rb") as f:  # a file object: torch.load hands *.safetensors paths to the package
            return torch.load(f, map_location=device, weights_only=True)

    package = types.ModuleType("safetensors")
    package.__spec__ = importlib.machinery.ModuleSpec("safetensors", None)
    module = types.ModuleType("safetensors.torch")
    module.save_file = save_file  # type: ignore[attr-defined]
    module.load_file = load_file  # type: ignore[attr-defined]
    package.torch = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "safetensors", package)
    monkeypatch.setitem(sys.modules, "safetensors.torch", module)
    _check_safetensors_round_trip(classifier_checkpoint, classifier, tmp_path / "exp" / "m.safetensors")
    (tmp_path / "exp" / "m.json").unlink()
    with pytest.raises(CheckpointError, match="pair"):
        load_classifier(tmp_path / "exp" / "m.safetensors")


def test_onnx_export_gives_the_checkpoints_logits_in_onnxruntime(
    classifier_checkpoint: Path,
    classifier: ImageClassifier,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("onnxruntime")
    import onnx

    from simclrv2.inference import ONNX_META, export_onnx, onnx_logits

    assert main(["export", "--model", str(classifier_checkpoint), "--format", "onnx"]) == 0
    path = classifier_checkpoint.parent / "model.onnx"
    assert "onnxruntime vs the checkpoint" in capsys.readouterr().out
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta[ONNX_META])["classes"][0] == "class0"
    gen = torch.Generator().manual_seed(2)
    for n in (1, 5):  # any batch size
        x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
        with torch.no_grad():
            torch.testing.assert_close(onnx_logits(path, x), classifier(x), atol=1e-4, rtol=0)
    assert main(["export", "--model", str(classifier_checkpoint), "--format", "onnx"]) == 2  # no --force

    # A model with large logits and the 87.5% bicubic centre crop (crop 56 of 64 px), gray float input.
    arch = model_arch("r18_0.125x_sk0", True, 0, 0, 0, 3)
    torch.manual_seed(0)
    model = build_model(arch).eval()
    for p in model.classifier.parameters():  # zero-initialised otherwise
        p.data.normal_(0.0, 10.0)
    big = ImageClassifier(model, arch, ["a", "b", "c"], image_size=56, load_size=64).eval()
    out = export_onnx(big, tmp_path / "big.onnx", channels=1, dtype=torch.float32)
    gray = torch.rand(3, 1, 64, 64, generator=gen)
    with torch.no_grad():
        expected = big(gray)
    assert expected.abs().max() > 1.0 and expected.std(dim=0).min() > 0.01  # differs per image
    torch.testing.assert_close(
        onnx_logits(out, gray), expected, atol=1e-4 * float(expected.abs().max()), rtol=0
    )
