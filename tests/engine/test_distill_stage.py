"""Distillation stage: frozen teacher, student trained on all images, CLI end to end."""

import json
from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.config import ConfigError, DistillConfig, load_config
from simclrv2.engine.distill import distill, resolve_student

DATA = ["data.name=synthetic", "data.synthetic_size=96", "precision=fp32", "log_every_steps=1"]
DISTILL = ["optim.warmup_epochs=0.5"]


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def teacher(pretrained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "ft"
    args = ["finetune", "--pretrained", str(pretrained_checkpoint), "--labels", "25%"]
    assert main([*args, *_sets(*DATA, "batch_size=16", "epochs=1", f"run_dir={run}")]) == 0
    return run / "last.pt"


def _config(teacher: Path, run: Path, *extra: str) -> DistillConfig:
    overrides = [*DATA, *DISTILL, f"teacher={teacher}", f"run_dir={run}", "batch_size=32", "epochs=1", *extra]
    return load_config(DistillConfig, None, overrides)


def test_teacher_is_untouched_and_student_learns_from_it(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import simclrv2.engine.distill as mod

    seen: dict[str, torch.nn.Module] = {}
    build = mod.build_model_from_checkpoint

    def spy(ckpt: object) -> torch.nn.Module:
        model = build(ckpt)  # type: ignore[arg-type]
        seen["teacher"] = model
        return model

    monkeypatch.setattr(mod, "build_model_from_checkpoint", spy)
    results = distill(_config(teacher, tmp_path / "d", "max_steps=2"), show_progress=False)
    t = seen["teacher"]
    before = load_checkpoint(teacher)["model"]
    for key, value in t.state_dict().items():  # bitwise unchanged, BN running statistics included
        assert torch.equal(value.cpu(), before[key]), key
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert results["self_distillation"] and results["temperature"] == 0.1 and results["step"] == 2
    student = load_checkpoint(tmp_path / "d" / "last.pt", stage="distill")
    assert student["arch"]["head_layers"] == 0  # no projection head in the student
    assert not any(k.startswith("head.") for k in student["model"])
    assert json.loads((tmp_path / "d" / "eval.json").read_text())["num_images"] > 0


def test_big_to_small_defaults_and_cli(teacher: Path, tmp_path: Path) -> None:
    run = tmp_path / "small"
    args = ["distill", "--teacher", str(teacher), "--student", "r18_0.125x_sk0"]
    sets = _sets(*DATA, *DISTILL, "batch_size=32", "epochs=1", "max_steps=1", f"run_dir={run}")
    assert main([*args, *sets]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["student"] == "r18_0.125x_sk0" and results["temperature"] == 1.0
    assert not results["self_distillation"]
    assert resolve_student("same", "r50_1x_sk0") == ("r50_1x_sk0", True)


def test_alpha_mix_uses_the_teachers_labels_and_bad_input_is_refused(
    teacher: Path, pretrained_checkpoint: Path, tmp_path: Path
) -> None:
    results = distill(_config(teacher, tmp_path / "mix", "alpha=0.5", "max_steps=1"), show_progress=False)
    assert results["alpha"] == 0.5
    only_unlabeled = distill(
        _config(teacher, tmp_path / "u", "exclude_labeled=true", "max_steps=1"), show_progress=False
    )
    labeled = int(load_checkpoint(teacher)["num_labeled"])
    assert only_unlabeled["steps_per_epoch"] == (96 - labeled) / 32 and labeled > 0
    with pytest.raises(Exception, match="pretrain' checkpoint; the teacher must be a"):
        distill(_config(pretrained_checkpoint, tmp_path / "bad"), show_progress=False)
    with pytest.raises(ConfigError, match="alpha must be in"):
        _config(teacher, tmp_path / "x", "alpha=1.5")
    with pytest.raises(ConfigError, match="student"):
        _config(teacher, tmp_path / "x", "student=resnet9000")


def test_student_init_auto_starts_a_short_self_distillation_from_the_teacher() -> None:
    """``auto``: the teacher's backbone for a self-distilled student up to 10 epochs (a small budget), from
    scratch beyond (the paper's 400-epoch students) and for smaller students; ``teacher`` needs the same
    architecture; a path is taken as it is."""
    from simclrv2.config import ConfigError
    from simclrv2.engine.distill import resolve_student_init

    assert resolve_student_init("auto", True, 2, "t.pt") == "t.pt"
    assert resolve_student_init("auto", True, 0.5, "t.pt") == "t.pt"
    assert resolve_student_init("auto", True, 100, "t.pt") is None
    assert resolve_student_init("auto", False, 2, "t.pt") is None
    assert resolve_student_init("scratch", True, 2, "t.pt") is None
    assert resolve_student_init(None, True, 2, "t.pt") is None
    assert resolve_student_init("teacher", True, 100, "t.pt") == "t.pt"
    assert resolve_student_init("other.pt", False, 2, "t.pt") == "other.pt"
    with pytest.raises(ConfigError, match="needs self-distillation"):
        resolve_student_init("teacher", False, 2, "t.pt")


def test_warm_start_fits_the_students_classifier_to_a_teacher_it_can_express() -> None:
    """A teacher that classifies linearly from the very backbone the student starts from (from_layer 0):
    after the warm start the student's softened predictions are the teacher's (the fit is exact up to L-BFGS
    tolerance), its classifier is the fitted one scaled by tau, and the backbone is untouched."""
    from simclrv2.data.datasets import make_synthetic
    from simclrv2.engine.classify import predict_logits
    from simclrv2.engine.distill import warm_start_classifier
    from simclrv2.engine.finetune import build_model, model_arch

    torch.manual_seed(0)
    arch = model_arch("r18_0.125x_sk0", True, 0, 0, 0, 10)
    teacher, student = build_model(arch).eval(), build_model(arch)
    with torch.no_grad():
        teacher.classifier.weight.normal_(0.0, 2.0)  # a spread of confident and unsure predictions
    student.backbone.load_state_dict(teacher.backbone.state_dict())
    backbone_before = {k: v.clone() for k, v in student.backbone.state_dict().items()}
    data = make_synthetic("train", size=200, image_size=16)
    feature_pass = {"device": torch.device("cpu"), "precision": "fp32", "batch_size": 64,
                    "crop_size": 16, "channels_last": False}  # fmt: skip
    tau = 0.5
    agreement = warm_start_classifier(student, teacher, data, tau, feature_pass, show_progress=False)
    t, _ = predict_logits(teacher, data, show_progress=False, **feature_pass)
    s, _ = predict_logits(student, data, show_progress=False, **feature_pass)
    p_t, p_s = torch.softmax(t / tau, 1), torch.softmax(s / tau, 1)
    assert (p_s - p_t).abs().max() < 0.05 and agreement > 90.0, (agreement, (p_s - p_t).abs().max())
    for k, v in student.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    # a random classifier, for contrast: the check above would fail without the fit
    fresh = build_model(arch)
    fresh.backbone.load_state_dict(teacher.backbone.state_dict())
    r, _ = predict_logits(fresh, data, show_progress=False, **feature_pass)
    assert (torch.softmax(r / tau, 1) - p_t).abs().max() > 0.3
