"""Bad settings stop every command before any work, with one line naming the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import CONFIG, STAGE_CHECKPOINTS, TINY_PRETRAIN, FaultLog, error_line, sets

from simclrv2.cli import main
from simclrv2.data import BatchLoader, load_dataset

PRETRAIN_CASES = [
    ("unknown key", ["epoch=3"], ["unknown config key epoch", "valid keys here", "epochs"]),
    ("unknown nested key", ["optim.lr=0.3"], ["unknown config key optim.lr", "optim.base_lr"]),
    ("wrong type: text for an int", ["batch_size=abc"], ["batch_size: expected int, got 'abc'"]),
    ("wrong type: float for an int", ["batch_size=2.5"], ["batch_size: expected int"]),
    ("wrong type: a list for a float", ["optim.base_lr=[1, 2]"], ["optim.base_lr: expected float"]),
    ("wrong type: a word for a bool", ["channels_last=maybe"], ["channels_last: expected bool"]),
    ("wrong type: a value for a section", ["optim=3"], ["optim: expected a mapping"]),
    ("negative learning rate", ["optim.base_lr=-0.1"], ["optim.base_lr must be > 0, got -0.1"]),
    ("temperature 0", ["temperature=0"], ["temperature must be > 0"]),
    ("momentum out of range", ["optim.momentum=1.5"], ["optim.momentum must be in [0.0, 1.0)"]),
    ("unknown choice", ["precision=fp16"], ["precision: 'fp16' is not one of auto, bf16, fp32"]),
    ("bad-image policy not fail/skip", ["data.bad_images=ignore"], ["data.bad_images: 'ignore'"]),
    ("unknown backbone", ["model.backbone=r51_1x_sk0"], ["model.backbone", "depth 51"]),
    ("override without '='", ["epochs"], ["must look like key=value"]),
    ("batch size larger than the dataset", ["batch_size=64"], ["has 32 images, fewer than one", "64"]),
    ("warmup longer than the run", ["optim.warmup_epochs=5"], ["optim.warmup_epochs=5.0 is not shorter"]),
    ("CUDA requested on a machine without a GPU", ["device=cuda"], ["no CUDA GPU", "device=cpu"]),
]


@pytest.mark.parametrize(
    ("case", "overrides", "messages"), PRETRAIN_CASES, ids=[c[0] for c in PRETRAIN_CASES]
)
def test_bad_pretrain_settings_stop_before_work(
    case: str,
    overrides: list[str],
    messages: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: FaultLog,
) -> None:
    import torch

    if case.startswith("CUDA") and torch.cuda.is_available():
        # these cases ask for CUDA on a machine without one; with a GPU visible the request is valid
        pytest.skip("a GPU is visible here")
    run = tmp_path / "run"
    assert main(["pretrain", *sets(*TINY_PRETRAIN, f"run_dir={run}"), *sets(*overrides)]) == 2
    err = error_line(capsys.readouterr().err, "pretrain")
    assert all(m in err for m in messages), err
    assert not run.exists()  # nothing was written
    fault.record(CONFIG, f"{case} (--set {' '.join(overrides)})", "clear error (exit 2) naming the key")


def test_bad_config_files_stop_before_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    files = {
        "config file does not exist": (None, ["does not exist", "configs/"]),
        "config file is not valid YAML": ("epochs: [1, 2\n", ["is not valid YAML"]),
        "config file is a list, not a mapping": ("- epochs\n- 3\n", ["must hold a mapping"]),
        "typo in a YAML section": (
            "optim:\n  wieght_decay: 0.1\n",
            ["unknown config key optim.wieght_decay"],
        ),
    }
    for case, (text, messages) in files.items():
        path = tmp_path / f"{len(case)}.yaml"
        if text is not None:
            path.write_text(text)
        assert main(["pretrain", "--config", str(path), "--set", f"run_dir={tmp_path / 'r'}"]) == 2
        err = error_line(capsys.readouterr().err, "pretrain")
        assert all(m in err for m in messages), (case, err)
        fault.record(CONFIG, case, "clear error (exit 2)")


def test_bad_stage_settings_stop_before_work(
    tiny_pipeline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    pretrained = tiny_pipeline_run / STAGE_CHECKPOINTS["pretrain"]
    teacher = tiny_pipeline_run / STAGE_CHECKPOINTS["finetune"]
    data = sets("data.name=synthetic", "data.synthetic_size=32", "data.load_size=16", "device=cpu")
    run = tmp_path / "run"
    finetune = ["finetune", "--pretrained", str(pretrained), *data, "--set", f"run_dir={run}"]
    distill = ["distill", "--teacher", str(teacher), *data, "--set", f"run_dir={run}"]
    cases = [
        ("label fraction 0%", [*finetune, "--labels", "0%"], ["must be in (0%, 100%]"]),
        ("label fraction above 100%", [*finetune, "--labels", "150%"], ["must be in (0%, 100%]"]),
        ("0 labels per class", [*finetune, "--labels", "0/class"], ["must be >= 1"]),
        ("unreadable label spec", [*finetune, "--labels", "ten"], ["cannot read label spec 'ten'"]),
        ("more labels per class than images", [*finetune, "--labels", "50/class"], ["fewer than 50/class"]),
        ("fine-tune layer beyond the head's depth", [*finetune, "--from-layer", "4"], ["3 layers"]),
        ("fine-tune layer below -1", [*finetune, "--from-layer", "-2"], ["from_layer must be -1"]),
        ("distillation temperature 0", [*distill, "--temperature", "0"], ["temperature must be > 0"]),
        ("distillation alpha above 1", [*distill, "--alpha", "1.5"], ["alpha must be in [0.0, 1.0]"]),
        (
            "distillation batch larger than the dataset",
            [*distill, *sets("batch_size=64")],
            ["fewer than one"],
        ),
        ("negative checkpoint period", [*finetune, *sets("checkpoint_every_steps=-1")], [">= 0"]),
    ]
    for case, argv, messages in cases:
        assert main(argv) == 2, case
        err = error_line(capsys.readouterr().err, argv[0])
        assert all(m in err for m in messages), (case, err)
        assert not (run / "last.pt").exists(), case
        fault.record(CONFIG, f"{argv[0]}: {case}", "clear error (exit 2) naming the setting")

    pipeline = ["pipeline", "--set", f"run_dir={tmp_path / 'p'}"]
    for case, overrides, message in [
        (
            "pipeline: fine-tune layer beyond the head's depth",
            ["finetune_layers=[0, 5]"],
            "beyond the projection",
        ),
        (
            "pipeline: a stage's negative LR",
            ["distill.optim.base_lr=-1"],
            "distill.optim.base_lr must be > 0",
        ),
        ("pipeline: label fraction 0%", ["labels=[0%]"], "must be in (0%, 100%]"),
    ]:
        assert main([*pipeline, *sets(*overrides)]) == 2
        assert message in error_line(capsys.readouterr().err, "pipeline"), case
        assert not (tmp_path / "p").exists()
        fault.record(CONFIG, case, "clear error (exit 2) before any stage runs")


def test_a_batch_not_divisible_by_the_world_size_is_refused(fault: FaultLog) -> None:
    """The loader shards every global batch over the ranks (checked where the world size is known)."""
    data = load_dataset("synthetic", "train", synthetic_size=32, image_size=8)
    with pytest.raises(
        ValueError, match="global batch_size 10 is not divisible by world_size 4; use a multiple"
    ):
        BatchLoader(data, batch_size=10, world_size=4, rank=0)
    fault.record(CONFIG, "global batch not divisible by the world size (4 ranks, batch 10)", "clear error")
