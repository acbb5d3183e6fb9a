"""Checkpoint writes that die (killed inside the write, disk full) and checkpoints that are wrong (truncated,
not a checkpoint, another stage, another architecture): the previous checkpoint survives; errors are one
clear line."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from faultkit import (
    CHECKPOINTS,
    STAGE_CHECKPOINTS,
    TINY_PIPELINE,
    TINY_PRETRAIN,
    WRITES,
    FaultLog,
    error_line,
    run_forked,
    sets,
)
from PIL import Image

from simclrv2.checkpoint import CheckpointError, CheckpointWriteError, atomic_save, load_checkpoint
from simclrv2.cli import main


def _ckpt(value: float) -> dict:
    return {"format": 1, "stage": "pretrain", "model": {"w": torch.full((1000,), value)}, "step": int(value)}


def _die_inside_save(path: Path, where: str) -> None:
    """Write a checkpoint and SIGKILL this process in the middle of it (``where``: the pickle stream half
    written, or the temp file complete but not yet renamed)."""
    if where == "mid-write":
        real_save = torch.save

        def dying_save(obj: object, f: object) -> None:
            real_save(obj, f)  # type: ignore[arg-type]
            f.truncate(f.tell() // 2)  # type: ignore[attr-defined]  # half of it on disk...
            f.flush()  # type: ignore[attr-defined]
            os.kill(os.getpid(), signal.SIGKILL)  # ...and the process dies

        torch.save = dying_save  # type: ignore[assignment]  # this child only
    else:
        real_replace = os.replace

        def dying_replace(src: str, dst: object) -> None:
            os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)  # type: ignore[arg-type]  # never reached

        os.replace = dying_replace  # type: ignore[assignment]
    atomic_save(_ckpt(2.0), path)


@pytest.mark.parametrize("where", ["mid-write", "before-rename"])
def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_one_loadable(
    tmp_path: Path, fault: FaultLog, where: str
) -> None:
    path = tmp_path / "last.pt"
    atomic_save(_ckpt(1.0), path)
    assert run_forked(_die_inside_save, path, where) == -signal.SIGKILL
    stale = list(tmp_path.glob(".last.pt.*.tmp"))
    assert len(stale) == 1  # the dead writer's temp file, never renamed over last.pt
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1000))
    atomic_save(_ckpt(3.0), path)  # the next save removes the stale temp file
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["step"] == 3
    fault.record(
        WRITES,
        f"SIGKILL inside a checkpoint write ({where.replace('-', ' ')})",
        "survived: previous checkpoint loadable; stale temp file removed by the next save",
    )


def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def filling_save(obj: object, f: object) -> None:
        calls["n"] += 1
        if calls["n"] < 3:
            return real_save(obj, f)  # type: ignore[arg-type]
        f.write(b"\0" * 1024)  # type: ignore[attr-defined]  # part of it fits, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", filling_save)
    run = tmp_path / "run"
    assert main(["pretrain", *sets(*TINY_PRETRAIN, f"run_dir={run}")]) == 2
    err = error_line(capsys.readouterr().err, "pretrain")
    assert err.startswith("simclrv2 pretrain: error: cannot write checkpoint")
    assert "No space left on device" in err and "previous checkpoint is intact" in err and "--resume" in err
    monkeypatch.undo()
    assert load_checkpoint(run / "last.pt", stage="pretrain")["step"] == 2
    assert [p.name for p in run.glob(".last.pt*")] == []
    with pytest.raises(CheckpointWriteError) as info:  # also an OSError, with the errno, for API callers
        monkeypatch.setattr(torch, "save", filling_save)
        atomic_save(_ckpt(1.0), run / "last.pt")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    fault.record(
        WRITES,
        "disk full (ENOSPC) while saving a checkpoint",
        "clear error (exit 2); previous checkpoint intact, no temp file left",
    )


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, error_line(capsys.readouterr().err, argv[0])


def test_wrong_checkpoints_are_refused_with_a_clear_error(
    tiny_pipeline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    pretrain_ckpt = tiny_pipeline_run / STAGE_CHECKPOINTS["pretrain"]
    finetune_ckpt = tiny_pipeline_run / STAGE_CHECKPOINTS["finetune"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(pretrain_ckpt.read_bytes()[:5000])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    image = tmp_path / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    data = ["--set", "data.name=synthetic", "--set", "data.synthetic_size=32", "--set", "data.load_size=16"]

    def finetune(ckpt: Path, run: str) -> list[str]:
        return ["finetune", "--pretrained", str(ckpt), *data, "--set", f"run_dir={tmp_path / run}"]

    cases = [
        ("truncated checkpoint file", finetune(truncated, "a"), "cannot load checkpoint"),
        ("a file that is not a checkpoint (text)", finetune(text, "b"), "cannot load checkpoint"),
        ("a torch file that is not a simclrv2 checkpoint", finetune(foreign, "c"), "not a simclrv2"),
        ("missing checkpoint file", finetune(tmp_path / "nope.pt", "d"), "does not exist"),
        (
            "checkpoint of another stage (finetune given as --pretrained)",
            finetune(finetune_ckpt, "e"),
            "is a 'finetune' checkpoint, expected a 'pretrain' one",
        ),
        (
            "checkpoint of another stage (pretrain given as --teacher)",
            ["distill", "--teacher", str(pretrain_ckpt), *data, "--set", f"run_dir={tmp_path / 'f'}"],
            "the teacher must be a fine-tuned classifier",
        ),
        (
            "checkpoint of another stage (pretrain given to predict)",
            ["predict", "--model", str(pretrain_ckpt), str(image)],
            "without a classifier",
        ),
    ]
    for case, argv, message in cases:
        code, err = _run(argv, capsys)
        assert code == 2, (case, err)
        assert message in err, (case, err)
        fault.record(CHECKPOINTS, case, "clear error (exit 2)")

    # Wrong architecture: resuming a run with another backbone, and a tampered classifier checkpoint.
    run = tmp_path / "resume"
    run.mkdir()
    shutil.copy(pretrain_ckpt, run / "last.pt")
    argv = ["pretrain", "--resume", *sets(*TINY_PRETRAIN, f"run_dir={run}", "model.backbone=r18_0.25x_sk0")]
    code, err = _run(argv, capsys)
    assert code == 2 and "does not fit this model" in err and "mis-shaped" in err, err
    assert "model.backbone.stages.0.0.bn1.bias (8,) vs (16,)" in err, err
    fault.record(CHECKPOINTS, "wrong architecture on --resume (other backbone width)", "clear error (exit 2)")

    ckpt = load_checkpoint(finetune_ckpt)
    del ckpt["model"]["classifier.weight"]
    ckpt["model"]["extra.weight"] = torch.zeros(1)
    tampered = tmp_path / "tampered.pt"
    torch.save(ckpt, tampered)
    code, err = _run(["predict", "--model", str(tampered), str(image)], capsys)
    assert code == 2 and "missing 1 keys: classifier.weight" in err
    assert "unexpected 1 keys: extra.weight" in err
    fault.record(
        CHECKPOINTS, "classifier checkpoint whose weights do not fit its architecture", "clear error (exit 2)"
    )

    # A run directory holding another stage's checkpoint, resumed.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(pretrain_ckpt, other / "last.pt")
    code, err = _run([*finetune(pretrain_ckpt, "other"), "--resume"], capsys)
    assert code == 2 and "is a 'pretrain' checkpoint, expected a 'finetune' one" in err, err
    fault.record(CHECKPOINTS, "--resume onto another stage's checkpoint", "clear error (exit 2)")
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_a_pipeline_rerun_with_other_settings_never_reuses_the_finished_stages(
    tiny_pipeline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    """The finished tiny pipeline, copied elsewhere (every path in its files now points at the old place),
    rerun with the same settings: all reused; with a stage's setting changed: one clear error naming that
    stage and setting, and the finished results untouched."""
    root = tmp_path / "copy"
    shutil.copytree(tiny_pipeline_run, root)
    results = root / "finetune" / "50pct" / "layer1" / "seed0" / "results.json"
    before = results.read_bytes()
    argv = ["pipeline", *sets(*TINY_PIPELINE, f"run_dir={root}")]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert said.count("finished earlier") == 3 and "starting in" not in said  # all reused, paths aside
    assert results.read_bytes() == before
    code, err = _run([*argv, "--set", "finetune.epochs=4"], capsys)
    assert code == 2 and "finished fine-tune 50% from layer 1 seed 0 run with other settings" in err, err
    assert "(epochs: 3 there, 4 now)" in err and "--set run_dir=" in err
    assert results.read_bytes() == before
    fault.record(
        CHECKPOINTS, "pipeline rerun into a finished run directory with another stage setting",
        "clear error (exit 2) naming the stage and setting; finished results untouched",
    )  # fmt: skip
