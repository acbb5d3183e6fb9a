"""benchmarks/throughput.py at tiny sizes (``--smoke``), so that the benchmark cannot rot: every mode runs,
writes its JSON, and the Markdown tables (and the README's generated blocks) render from the JSON."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `benchmarks` package

from benchmarks import throughput
from simclrv2.engine.runtime import cpu_has_fast_bf16


def test_smoke_benchmark_runs_every_mode_and_renders_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    # compare runs each path in a worker process (the script as a program, the JSON-lines protocol,
    # peak memory per process); the other modes run in this process to keep the test short.
    modes = [["compare"], ["levers", "--inprocess"], ["sweep", "--inprocess"], ["checkpoint", "--inprocess"]]
    modes += [["stages"], ["knn"], ["profile"]]
    for mode in modes:
        assert throughput.main([*mode, "--smoke", "--out", str(out)]) == 0, mode
    files = {f.stem: json.loads(f.read_text()) for f in out.glob("*.json")}
    assert sorted(r["mode"] for r in files.values()) == sorted(m[0] for m in modes)

    compare = next(r for r in files.values() if r["mode"] == "compare")
    ref, ours = compare["paths"]
    assert (ref["label"], ours["label"]) == ("reference", "ours")
    assert compare["ratio"] == pytest.approx(ours["median_images_per_sec"] / ref["median_images_per_sec"])
    for path in (ref, ours):
        assert len(path["images_per_sec"]) == compare["reps"] and min(path["images_per_sec"]) > 0
        assert path["flops_per_step"] > 0 and path["fraction_of_peak"] > 0
        assert path["memory"]["rss_peak_mb"] > 100  # a process with torch imported
    assert ref["memory"]["workers"] == 1  # the reference's DataLoader worker (1 in smoke mode)
    assert ours["precision"] in ("bf16", "fp32") and ref["precision"] == "fp32"
    assert compare["machine"]["torch"] and compare["peak"]["fp32"]["peak_gflops"] > 0
    if cpu_has_fast_bf16():  # else the bf16 peak is skipped (the next test)
        assert compare["peak"]["bf16"]["peak_gflops"] > 0
    assert "load_avg_1min_per_rep" in compare

    levers = next(r for r in files.values() if r["mode"] == "levers")
    assert {row["lever"] for row in levers["levers"]} >= {"bf16 autocast", "channels-last", "foreach LARS"}
    knn = next(r for r in files.values() if r["mode"] == "knn")
    assert {r["label"] for r in knn["runs"]} == {"reference", "ours"}
    assert all(0 <= r["knn_top1"] <= 100 for r in knn["runs"])

    capsys.readouterr()
    assert throughput.main(["table", *map(str, sorted(out.glob("*.json")))]) == 0
    printed = capsys.readouterr().out
    assert "ours / reference" in printed and "| foreach LARS |" in printed and "kNN evaluation" in printed
    assert "| convolution backward |" in printed

    readme = tmp_path / "README.md"
    name = compare["name"]
    readme.write_text(f"# x\n<!-- table:{name} -->\nstale\n<!-- /table -->\nkept\n")
    monkeypatch.setattr(throughput, "RESULTS_DIR", out)
    assert throughput.update_readme(readme) == 1
    text = readme.read_text()
    assert "stale" not in text and "ours / reference" in text and text.endswith("<!-- /table -->\nkept\n")


def test_peak_skips_bf16_where_the_cpu_only_emulates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU without AVX512-BF16 (here: oneDNN capped at AVX2), timing emulated bf16 matmuls took over 10
    minutes before the benchmark measured anything: the bf16 peak is skipped, and compare still renders."""
    import torch

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    peak = throughput.measure_peak(torch.device("cpu"), smoke=True)
    assert peak["bf16"] is None and "emulates bf16" in peak["bf16_skipped"]
    assert peak["fp32"]["peak_gflops"] > 0
    out = tmp_path / "results"
    assert throughput.main(["compare", "--inprocess", "--smoke", "--out", str(out)]) == 0
    (result,) = [json.loads(f.read_text()) for f in out.glob("*.json")]
    assert result["peak"]["bf16"] is None and all(p["precision"] == "fp32" for p in result["paths"])
