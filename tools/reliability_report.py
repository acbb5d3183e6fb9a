"""Run the fault-injection suite (tests/reliability/) and write docs/reliability.md from what it measured.

    python tools/reliability_report.py                  # run the suite, write docs/reliability.md
    python tools/reliability_report.py --json out.json  # render an earlier run's records instead

Each test records the faults it injected and the outcome it asserted; a test that fails turns its rows into
FAILED (see tests/reliability/faultkit.py). Nothing in the table is typed by hand. The exit code is pytest's,
so a failing suite also fails this command (after writing the table that shows the failure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
from faultkit import CATEGORIES, REPORT_ENV  # noqa: E402

NOTES = """\
## How the faults are injected

- **Kills**: a tiny pipeline (pretrain -> fine-tune -> distill; 32 synthetic 16-px images, ResNet-18 at 1/8
  width, CPU, fp32, one thread, a checkpoint every step) runs in forked children. The parent waits until a
  child has logged a randomly chosen step of a stage, sleeps a random fraction of a step and sends SIGKILL,
  then reruns the pipeline on the same directory; finished stages are skipped, the interrupted one resumes
  from its `last.pt`. After every kill each stage's latest checkpoint must load; at the end every stage's
  weights and optimiser state must equal, bit for bit, those of an uninterrupted run. The kill points come
  from a seeded RNG (`SIMCLRV2_KILL_SEED`, default 7), so a failure can be replayed. "Inside a checkpoint
  write" counts the kills that left a temp file of an unfinished write behind.
- **Signals**: SIGTERM to the real `simclrv2 pretrain` process, SIGINT/SIGTERM to forked fine-tuning runs,
  and a second signal during a step made slow on purpose.
- **Disk full / kills inside writes**: `torch.save` or `os.replace` patched to raise `ENOSPC` or to SIGKILL
  the writing process half-way.
- **Runtime failures**: the loss patched to NaN/Inf from step 3, a weight set to Inf after a step, the step
  patched to raise CUDA's `OutOfMemoryError` or the CPU allocator's error.
- **Security**: crafted pickles that would `touch` a marker file if unpickled (a raw pickle and a torch zip
  checkpoint), given to every command that reads a checkpoint; a static scan of `src/` for deserialisers;
  sockets, DNS and urllib replaced by functions that log and refuse while a pipeline runs.
- **Fuzzing**: hypothesis generates `--set` overrides, YAML documents (structured and raw bytes), subset
  files, index files and label specs.

Exit codes of the `simclrv2` command: 0 done; 2 bad input (config, data, checkpoint, a failed checkpoint
write); 3 stopped (NaN/Inf, out of memory); 75 interrupted by SIGTERM/SIGINT after writing a checkpoint
(resumable: rerun with `--resume`, or the same pipeline command); 130/143 stopped at once by a second
SIGINT/SIGTERM (the previous checkpoint is intact).

Not covered: multi-process (torchrun) runs, where a signal must reach every rank (torchrun forwards it) and
only rank 0 writes; CIFAR's python-pickle batches, which torchvision unpickles (trusted downloads only).
A truncated JPEG (no end marker) is caught by the scan before training; damage that only decoding finds
(simulated in the suite) stops the run naming the file or, with `data.bad_images=skip`, the image is replaced
by the next one; a user folder that fits the memory budget is decoded before training, so there it is
caught before any work too.
"""


def run_suite(json_path: Path, pytest_args: list[str]) -> tuple[int, float]:
    path = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, REPORT_ENV: str(json_path), "PYTHONPATH": path}  # this checkout's sources first
    cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider", *pytest_args]
    t0 = time.time()
    code = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    return code, time.time() - t0


def _short(nodeid: str) -> str:
    return nodeid.split("tests/reliability/", 1)[-1].replace(".py::", "::")


def render(records: dict, wall: float | None) -> str:
    tests = records["tests"]
    results = [t["result"] for t in tests]
    n_failed = sum(r == "failed" for r in results)
    rows: dict[str, list[tuple[str, int, str, str]]] = {c: [] for c in CATEGORIES}
    for t in tests:
        failed = t["result"] != "passed"
        for case in t["cases"]:
            outcome = (
                f"**{t['result'].upper()}** (asserted: {case['outcome']})" if failed else case["outcome"]
            )
            rows[case["category"]].append((case["case"], case["count"], outcome, _short(t["nodeid"])))
        if not t["cases"]:
            rows.setdefault("Tests that recorded no case (failed before recording)", []).append(
                ("(the test recorded no case)", 0, f"**{t['result'].upper()}**", _short(t["nodeid"]))
            )
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src", "tests"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        commit += " with local changes" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import torch

    when = datetime.datetime.fromtimestamp(records["finished"], datetime.timezone.utc).strftime("%Y-%m-%d")
    out = [
        "# Reliability and security: fault-injection results",
        "",
        "<!-- Generated by `python tools/reliability_report.py` from tests/reliability/; do not edit. -->",
        "",
        "Generated by `python tools/reliability_report.py` (which runs `pytest tests/reliability`) on "
        f"{when}, "
        f"commit `{commit}`, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
        + (f", {wall:.0f} s" if wall is not None else "")
        + f". **{len(tests) - n_failed} of {len(tests)} tests passed"
        + (f", {n_failed} FAILED**." if n_failed else "**."),
        "",
        "Every row is a fault the suite injected or a bad input it tried; *cases* counts the injections "
        "(e.g. kill points); the outcome is what the test asserted and observed. A failing test shows its "
        "rows as FAILED.",
        "",
        "## Summary",
        "",
        "| Category | Rows | Cases | Failed rows |",
        "|---|---:|---:|---:|",
    ]
    for category, items in rows.items():
        if items:
            bad = sum(o.startswith("**") and not o.startswith("**PASSED") for _, _, o, _ in items)
            out.append(f"| {category} | {len(items)} | {sum(c for _, c, _, _ in items)} | {bad} |")
    for category, items in rows.items():
        if not items:
            continue
        out += [
            "",
            f"## {category}",
            "",
            "| Fault injected / bad input | Cases | Outcome | Test |",
            "|---|---:|---|---|",
        ]
        for case, count, outcome, test in items:
            cell, result = case.replace("|", "\\|"), outcome.replace("|", "\\|")
            out.append(f"| {cell} | {count} | {result} | `{test}` |")
    out += ["", NOTES]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, help="render these records instead of running the suite")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    code, wall = 0, None
    if args.json is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "reliability.json"
            code, wall = run_suite(path, args.pytest_args)
            if not path.exists():
                print("the suite wrote no records (collection error?)", file=sys.stderr)
                return code or 1
            records = json.loads(path.read_text())
    else:
        records = json.loads(args.json.read_text())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(records, wall) + "\n")
    print(f"wrote {args.output}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
