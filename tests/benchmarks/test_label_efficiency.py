"""benchmarks/label_efficiency.py: the fast profile on Fashion-MNIST (the ordering the paper is about: at 10
labels per class, fine-tuning the pretrained network from head layer 1 beats supervised training on the same
labels, both tuned on a validation split), and the whole driver at tiny sizes on synthetic data."""

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `benchmarks` package

from benchmarks import label_efficiency as le

FT1 = "r18_0.25x: " + le.ROWS["ft1"]
SUP = "r18_0.25x: " + le.ROWS["sup"]


@pytest.mark.benchmark  # 10 min on AVX512-BF16, 38 on AVX2: CI runs the demo-config test instead
@pytest.mark.fashion_mnist
def test_fast_benchmark_fine_tuning_beats_supervised_at_10_labels_per_class(tmp_path: Path) -> None:
    run = tmp_path / "le"
    assert le.main(["--profile", "fast", "--run-dir", str(run)]) == 0
    res = json.loads((run / "label_efficiency.json").read_text())
    ft, sup = res["table"][FT1]["10/class"], res["table"][SUP]["10/class"]
    assert ft["n"] == sup["n"] == 1
    # Both sides chose their LR and epochs on the same validation split (label seed 0), never the test split.
    runs = {r["kind"]: r["results"] for r in res["runs"] if r["kind"] in ("finetune", "supervised")}
    assert len(runs["finetune"]["lr_grid"]) == len(runs["supervised"]["lr_grid"]) == 6
    assert ft["mean"] > sup["mean"], (ft, sup)
    assert (run / "label_efficiency.png").stat().st_size > 10_000


def test_the_whole_driver_at_tiny_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every row, the curve, the JSON, the chart, the claims and the README block, on synthetic data."""
    profile = copy.deepcopy(le.PROFILES["full"])
    profile.update(columns=["10/class", "10%"], seeds=[0, 1], pretrain_epochs=2, curve_epochs=[1])
    profile.update(curve_columns=["10/class"])
    profile["models"][0]["backbone"] = "r18_0.125x_sk0"
    profile["models"][1]["backbone"] = "r18_0.0625x_sk0"
    monkeypatch.setitem(le.PROFILES, "tiny", profile)
    tiny_epochs = {"10/class": [1, 2], "10%": [1]}
    monkeypatch.setattr(le, "EPOCHS_GRID", {"finetune": tiny_epochs, "supervised": tiny_epochs})
    monkeypatch.setattr(le, "FULL_SUPERVISED_EPOCHS", 1)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{le.MARK_BEGIN}\nthe previous table\n{le.MARK_END}\n\nafter\n")
    monkeypatch.setattr(le, "README", readme)
    sets = ["data.name=synthetic", "data.synthetic_size=300", "pretrain.batch_size=64", "distill.epochs=1"]
    sets += [f"{stage}.batch_size=64" for stage in ("finetune", "supervised", "distill")]
    out = tmp_path / "res.json"
    argv = ["--profile", "tiny", "--run-dir", str(tmp_path / "run"), "--out", str(out), "--readme"]
    assert le.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    res = json.loads(out.read_text())
    rows = {row.split(": ", 1)[1].split(".")[0] for row in res["table"]}
    assert rows == {"1", "2", "3", "4", "5", "6", "7"}
    big = profile["models"][0]["name"]
    for row, cells in res["table"].items():
        assert set(cells) == {"10/class", "10%"}, row
        seeds = 1 if row.startswith(f"{big}: 2.") else 2  # row 2 is one run on all labels
        assert all(c["n"] == seeds for c in cells.values()), row
        assert row.startswith(big) or row.split(": ")[1][0] in "345", row  # the small model: rows 3-5
    # Seed 0 searched (3 LRs x the column's epochs), seed 1 reused its choice.
    ft = [
        r for r in res["runs"] if r["kind"] == "finetune" and r["labels"] == "10/class" and r["model"] == big
    ]
    assert {r["seed"]: len(r["results"]["lr_grid"]) for r in ft} == {0: 6, 1: 0}
    assert all(r["wall_seconds"] and r["wall_seconds"] > 0 for r in res["runs"])
    assert set(res["curve"]) == {"10/class", "kNN (all labels)"} and set(res["curve"]["10/class"]) == {
        "1",
        "2",
    }
    assert {c["claim"][:3] for c in res["claims"]} >= {"(a)", "(b)", "(c)", "(d)"}
    probe = [c for c in res["claims"] if "row 5 >= row 3" in c["claim"]]  # issue 16: FT vs linear probe
    assert len(probe) == 2 and all("10/class: " in c["detail"] for c in probe)
    assert out.with_suffix(".png").stat().st_size > 10_000
    text = readme.read_text()
    assert "the previous table" not in text and text.endswith("after\n") and "| model: row |" in text
    # A second run finds every stage finished and writes the same table.
    assert le.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    assert json.loads(out.read_text())["table"] == res["table"]
    # A partial table: a skipped row is left out and named.
    partial = ["--skip-rows", "sup100", "--write-partial"]
    assert le.main([*argv, *partial, *(a for s in sets for a in ("--set", s))]) == 0
    part = json.loads(out.read_text())
    assert not any(": 2." in row for row in part["table"]) and part["skipped_rows"] == [le.ROWS["sup100"]]
    assert "Not run this time: 2. Supervised, 100% of the labels" in readme.read_text()

    # The same rows as slices (--only), in a new run directory: label seed 1's slice refuses to start
    # before seed 0's search has finished, then reuses its choice; the numbers equal the unsliced run's.
    sliced = ["--profile", "tiny", "--run-dir", str(tmp_path / "sliced")]
    sliced += [a for s in sets for a in ("--set", s)]
    assert le.main([*sliced, "--only-pretrain"]) == 0
    with pytest.raises(SystemExit) as refused:
        le.main([*sliced, "--only", f"{big}:10/class:ft1:1"])
    assert refused.value.code == 2
    assert le.main([*sliced, "--only", f"{big}:10/class:ft1:0"]) == 0
    threads = str(torch.get_num_threads())  # exercised, without changing the threads of later tests
    assert le.main([*sliced, "--only", f"{big}:10/class:ft1:1", "--threads", threads]) == 0
    for seed in (0, 1):
        stage = f"{big}/finetune/10-per-class/layer1/seed{seed}/results.json"
        whole = json.loads((tmp_path / "run" / stage).read_text())
        part = json.loads((tmp_path / "sliced" / stage).read_text())
        assert part["test"]["top1"] == whole["test"]["top1"] and part["lr_grid"] == whole["lr_grid"], seed
