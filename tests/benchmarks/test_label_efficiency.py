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


def test_the_whole_driver_at_tiny_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every row, the curve, the JSON, the chart, the claims and the README block, on synthetic data."""
    profile = copy.deepcopy(le.PROFILES["full"])
    profile.update(columns=["10/class", "10%"], seeds=[0, 1], pretrain_epochs=2, curve_epochs=[1])
    profile.update(curve_columns=["10/class"])
    profile["models"][0]["backbone"] = "r18_0.125x_sk0"
    profile["models"][1]["backbone"] = "r18_0.0625x_sk0"
    tiny_epochs = {"10/class": [1, 2], "10%": [1]}
    profile["grids"] = {
        "epochs": {"finetune": tiny_epochs, "supervised": tiny_epochs},
        "full_supervised_epochs": 1,
    }
    tiny = tmp_path / "tiny.json"  # a profile file: what the --jobs subprocesses read too
    tiny.write_text(json.dumps(profile))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{le.MARK_BEGIN}\nthe previous table\n{le.MARK_END}\n\nafter\n")
    monkeypatch.setattr(le, "README", readme)
    sets = ["data.name=synthetic", "data.synthetic_size=300", "pretrain.batch_size=64", "distill.epochs=1"]
    sets += [f"{stage}.batch_size=64" for stage in ("finetune", "supervised", "distill")]
    out = tmp_path / "res.json"
    argv = ["--profile", str(tiny), "--run-dir", str(tmp_path / "run"), "--out", str(out), "--readme"]
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
    sliced = ["--profile", str(tiny), "--run-dir", str(tmp_path / "sliced")]
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
    # --jobs on a smaller profile (the same stages, fewer of them: each slice is a fresh process), in the
    # same directory: rows 1, 3, 5 at 10/class, seed 1's slices after seed 0's; the table's cells are the
    # unsliced run's, to the digit.
    small_profile = dict(
        profile, columns=["10/class"], models=[dict(profile["models"][0], rows=["ft1", "sup", "linear"])]
    )
    (tmp_path / "small.json").write_text(json.dumps(small_profile))
    small = ["--profile", str(tmp_path / "small.json"), *sliced[2:]]
    jobs = [*small, "--jobs", "2", "--threads", threads]  # the in-process thread count: the same numerics
    assert le.main(jobs) == 0
    logs = sorted(p.stem for p in (tmp_path / "sliced" / "jobs").glob("*.log"))
    assert len(logs) == len(le.slices(small_profile)) == 7 and "pretrain" in logs
    table = json.loads((tmp_path / "sliced" / "label_efficiency.json").read_text())["table"]
    assert set(table) == {f"{big}: {le.ROWS[r]}" for r in ("ft1", "sup", "linear")}
    assert all(table[row]["10/class"] == res["table"][row]["10/class"] for row in table)
    # A slice that fails is named with its log and the slices that need it are not started: here the
    # pretraining, whose stage directory is a file.
    failing = tmp_path / "failing"
    (failing / big).mkdir(parents=True)
    (failing / big / "pretrain").write_text("not a directory")
    capsys.readouterr()
    bad = ["--profile", str(tiny), "--run-dir", str(failing), *(a for s in sets for a in ("--set", s))]
    assert le.main([*bad, "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert f"{len(le.slices(profile))} slice(s) failed or not started" in err
    assert str(failing / "jobs" / "pretrain.log") in err
    assert "not started: pretrain did not finish" in err


def test_jobs_slices_run_seed_0_first_and_every_row_once() -> None:
    """The --jobs schedule of the full profile: pretraining first, then every row of every model, column
    and seed in exactly one slice; a later seed's searched rows wait for seed 0's slice of the same rows;
    row 2 runs once."""
    profile = copy.deepcopy(le.PROFILES["full"])
    todo = le.slices(profile)
    assert todo[0] == le.Slice(le.PRETRAIN, None) and todo[0].argv(1) == ["--only-pretrain"]
    specs = {s.spec for s in todo}
    assert len(specs) == len(todo)
    covered = []
    for s in todo[1:]:
        assert s.argv(3) == ["--only", s.spec, "--threads", "3"]
        model, column, rows, seed = s.spec.split(":")
        covered += [(model, column, row, int(seed)) for row in rows.split(",")]
        if s.after != le.PRETRAIN:
            assert s.after in specs and s.after.endswith(":0") and int(seed) != 0
            assert todo.index(next(t for t in todo if t.spec == s.after)) < todo.index(s)
        elif int(seed) != 0:
            assert rows == "linear", s
    expected = [
        (m["name"], c, r, seed)
        for m in profile["models"] for c in profile["columns"] for r in m["rows"] for seed in profile["seeds"]
        if r != "sup100" or (c == "10%" and seed == 0)
    ]  # fmt: skip
    assert sorted(covered) == sorted(expected)
    assert (
        "r18_0.25x:10%:sup:1" in specs
        and next(s.after for s in todo if s.spec == "r18_0.25x:10%:sup:1") == "r18_0.25x:10%:sup,sup100:0"
    )
    skipped = le.slices(profile, skip=("self", "small"))
    assert not any("self" in s.spec or "small" in s.spec for s in skipped)
