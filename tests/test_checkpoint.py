import os
import pickle
from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import CheckpointError, atomic_save, load_checkpoint, unwrap


def _ckpt(value: float) -> dict:
    return {"format": 1, "stage": "pretrain", "model": {"w": torch.full((3,), value)}, "step": 1}


def test_round_trip_and_stage_check(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save(_ckpt(1.0), path)
    assert torch.equal(load_checkpoint(path, stage="pretrain")["model"]["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="is a 'pretrain' checkpoint, expected a 'finetune'"):
        load_checkpoint(path, stage="finetune")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    atomic_save(_ckpt(1.0), path)

    def dying_save(obj: object, f: object) -> None:
        f.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        atomic_save(_ckpt(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_truncated_and_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    atomic_save(_ckpt(1.0), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="not a simclrv2 checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch warns before refusing the file
def test_a_pickle_with_code_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"format": 1, "model": _Evil(str(marker))}, f)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unwrap_compiled_module() -> None:
    module = torch.nn.Linear(2, 2)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._orig_mod = module

    assert unwrap(Wrapper()) is module
    assert unwrap(module) is module
