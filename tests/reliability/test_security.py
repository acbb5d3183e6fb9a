"""Loading never executes code from a file; subset files cannot reach outside the dataset; a run uses no
network unless a download was asked for."""

from __future__ import annotations

import ast
import contextlib
import os
import pickle
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest
import torch
from faultkit import (
    SECURITY,
    STAGE_CHECKPOINTS,
    TINY_PIPELINE,
    TINY_PRETRAIN,
    FaultLog,
    error_line,
    run_forked,
    sets,
)
from PIL import Image

from simclrv2.cli import main

SRC = Path(__file__).resolve().parents[2] / "src" / "simclrv2"


class _Evil:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _malicious_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """A raw pickle and a torch zip checkpoint, each with a code-running object where the weights go."""
    raw = tmp_path / "evil_raw.pt"
    with raw.open("wb") as f:
        pickle.dump({"format": 1, "stage": "pretrain", "model": _Evil(marker)}, f)
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"format": 1, "stage": "pretrain", "model": {"w": _Evil(marker)}}, zipped)
    return {"raw pickle": raw, "torch zip checkpoint": zipped}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch warns before refusing the raw pickle
def test_malicious_pickles_are_refused_at_every_entry_point(
    tiny_pipeline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    marker = tmp_path / "pwned"
    image = tmp_path / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    data = sets("data.name=synthetic", "data.synthetic_size=32", "data.load_size=16")
    teacher = tiny_pipeline_run / STAGE_CHECKPOINTS["finetune"]
    pretrained = tiny_pipeline_run / STAGE_CHECKPOINTS["pretrain"]
    tried = 0
    for kind, evil in _malicious_files(tmp_path, marker).items():
        init = sets(f"student_init={evil}", "batch_size=16")  # a batch the 32 images fill
        entry_points = {
            "finetune --pretrained": ["finetune", "--pretrained", str(evil), *data],
            "linear-eval --pretrained": ["linear-eval", "--pretrained", str(evil), *data],
            "knn --pretrained": ["knn", "--pretrained", str(evil), *data],
            "distill --teacher": ["distill", "--teacher", str(evil), *data],
            "distill student_init": ["distill", "--teacher", str(teacher), *data, *init],
            "predict --model": ["predict", "--model", str(evil), str(image)],
            "export --model": ["export", "--model", str(evil), "--format", "torchscript"],
            "pretrain --resume": ["pretrain", "--resume", *sets(*TINY_PRETRAIN)],
            "finetune --resume": ["finetune", "--resume", "--pretrained", str(pretrained), *data],
        }
        for name, argv in entry_points.items():
            run = tmp_path / f"run_{tried}"
            run.mkdir()
            if "--resume" in argv:
                shutil.copy(evil, run / "last.pt")  # the run's own checkpoint was replaced
            if argv[0] not in ("predict", "export"):
                argv = [*argv, "--set", f"run_dir={run}"]
            assert main(argv) == 2, name
            err = error_line(capsys.readouterr().err, argv[0])
            assert "cannot load checkpoint" in err and "weights_only" in err, (name, err)
            assert not marker.exists(), f"{name}: the pickle ran code"
            tried += 1
        fault.record(
            SECURITY,
            f"malicious pickle ({kind}) at every checkpoint entry point ({', '.join(entry_points)})",
            "refused (exit 2), no code ran (marker file absent)",
            len(entry_points),
        )
    assert tried == 18


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == dotted:
            found.append(node)
    return found


def test_every_weight_load_in_the_package_is_weights_only(fault: FaultLog) -> None:
    """A static check over src/: torch.load only with weights_only=True; no pickle/jit/numpy-pickle loads."""
    files = sorted(SRC.rglob("*.py"))
    loads = 0
    for path in files:
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "torch.load"):
            kwargs = {k.arg: k.value for k in call.keywords}
            value = kwargs.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"
            loads += 1
        for banned in ("pickle.load", "pickle.loads", "torch.jit.load", "dill.load", "joblib.load"):
            assert not _calls(tree, banned), f"{path}: {banned}"
        for call in _calls(tree, "np.load") + _calls(tree, "numpy.load"):
            assert all(k.arg != "allow_pickle" for k in call.keywords), f"{path}:{call.lineno}"
    assert loads >= 1  # the one in checkpoint.load_checkpoint: every loader goes through it
    fault.record(
        SECURITY,
        f"static scan of {len(files)} source files for unsafe loads (torch.load, pickle, jit, numpy)",
        f"holds: {loads} torch.load call, weights_only=True; no other deserialiser",
        len(files),
    )


def _imagefolder(root: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        path = root / "train" / f"c{i % 2}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(path)


def test_subset_file_entries_cannot_escape_the_data_root(
    tiny_pipeline_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fault: FaultLog
) -> None:
    from simclrv2.data.subsets import read_subset_file

    root = tmp_path / "data"
    _imagefolder(root, [f"img{i}.png" for i in range(8)])
    outside = tmp_path / "secret.png"
    Image.new("RGB", (16, 16)).save(outside)
    hostile = [
        "../secret.png",
        "../../secret.png",
        str(outside),
        "/etc/passwd",
        "c0/img0.png",
        "..\\secret.png",
        "train/../../secret.png",
        "..",
    ]
    names = [f"img{i}.png" for i in range(8)]
    for entry in hostile:
        subset = tmp_path / "subset.txt"
        subset.write_text(f"img0.png\n{entry}\n")
        with pytest.raises(ValueError, match="bare file name"):
            read_subset_file(subset, names)
    # End to end: a fine-tuning run given such a file stops before reading anything outside the root.
    subset.write_text("img0.png\nimg1.png\n../secret.png\n")
    pretrained = tiny_pipeline_run / STAGE_CHECKPOINTS["pretrain"]
    argv = ["finetune", "--pretrained", str(pretrained), "--labels", str(subset)]
    argv += sets("data.name=imagefolder", f"data.root={root}", "data.load_size=16")
    argv += sets(f"run_dir={tmp_path / 'r'}")
    assert main(argv) == 2
    assert "must be a bare file name" in error_line(capsys.readouterr().err, "finetune")
    # A plain name that exists outside the root but not in the dataset is unknown, not found elsewhere.
    subset.write_text("img0.png\nsecret.png\n")
    with pytest.raises(ValueError, match="not in the dataset"):
        read_subset_file(subset, names)
    fault.record(
        SECURITY,
        "subset-file entries with '..', absolute paths, separators, or names outside the dataset",
        "refused (exit 2): entries only select the dataset's own files",
        len(hostile) + 1,
    )


def _no_network_pipeline(root: Path, log: Path, image: Path) -> None:
    """In a child: every way out to the network raises and is logged; then a pipeline (with its report),
    predict and export run."""
    attempts: list[str] = []

    def refuse(what: str):
        def blocked(*args: object, **kwargs: object) -> None:
            attempts.append(f"{what}{args[:2]}")
            log.write_text("\n".join(attempts))
            raise OSError(f"network access attempted: {what}")

        return blocked

    socket.socket.connect = refuse("socket.connect")  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse("socket.connect_ex")  # type: ignore[method-assign]
    socket.create_connection = refuse("socket.create_connection")  # type: ignore[assignment]
    socket.getaddrinfo = refuse("socket.getaddrinfo")  # type: ignore[assignment]
    urllib.request.urlopen = refuse("urllib.request.urlopen")  # type: ignore[assignment]
    for probe in (
        lambda: socket.socket().connect(("127.0.0.1", 9)),
        lambda: urllib.request.urlopen("http://x"),
    ):
        with contextlib.suppress(OSError):  # the blockade itself works (else this test could not fail)
            probe()
    assert len(attempts) == 2, attempts
    attempts.clear()
    from simclrv2.config import PipelineConfig, load_config
    from simclrv2.engine.pipeline import Pipeline

    Pipeline(load_config(PipelineConfig, None, [*TINY_PIPELINE, f"run_dir={root}"]), False).run()
    model = root / STAGE_CHECKPOINTS["distill"]
    assert main(["predict", "--model", str(model), str(image)]) == 0
    assert main(["export", "--model", str(model), "--format", "torchscript"]) == 0
    # A missing dataset without download=true is an error, not a download.
    code = main(["pretrain", *sets(*TINY_PRETRAIN, "data.name=cifar10", f"data.root={root}/none")])
    assert code == 2
    log.write_text("\n".join(attempts))


def test_no_network_access_at_run_time(tmp_path: Path, fault: FaultLog) -> None:
    from faultkit import warm_imports

    warm_imports()
    log = tmp_path / "network.log"
    log.write_text("")
    image = tmp_path / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    assert run_forked(_no_network_pipeline, tmp_path / "p", log, image) == 0
    assert log.read_text() == "", f"network access attempted: {log.read_text()}"
    assert (tmp_path / "p" / "report.md").is_file()
    fault.record(
        SECURITY,
        "network blocked (socket, DNS, urllib) during a pipeline with its report, predict, export, "
        "and a missing dataset without download",
        "holds: no connection attempted",
    )
