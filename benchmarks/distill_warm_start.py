"""The demo's distillation, ablated on the demo's own teachers: does a short self-distillation from the
teacher's backbone match its teacher, and what makes it (the classifier warm start, the temperature, the
budget, the LR)? Each variant runs ``simclrv2 distill --config configs/fashion_mnist.yaml`` (the demo's
distill section, at half an epoch over the 60,000 training images, LARS 0.002 * sqrt(256), batch 256) on the
fine-tuned layer-1 teachers of a finished demo run, changing one setting.

    make demo DEMO_RUN=runs/demo_x                          # or any finished pipeline run of the demo config
    python benchmarks/distill_warm_start.py runs/demo_x     # about 5 minutes with bf16, 15 in fp32

Writes ``<run>/distill_warm_start/results.json`` (``--out`` to choose) and prints a Markdown table: the
student's test top-1 and its change against the teacher.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.markers import splice_block

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist.yaml"
DOC = ROOT / "docs" / "distillation.md"
MARK_BEGIN, MARK_END = "<!-- distill-warm-start -->", "<!-- /distill-warm-start -->"

# name -> (what changes, extra CLI arguments of `simclrv2 distill`)
BUDGET = ["--set", "epochs=0.5"]  # every row: half an epoch unless it says otherwise (the demo runs 0.25)
TAU01 = ["--temperature", "0.1"]  # the paper's self-distillation temperature (the demo's config sets 1.0)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "cold_tau0.1": ("a fresh classifier on the teacher's backbone, tau 0.1 (the previous demo)",
                    ["--set", "warm_start=false", *TAU01]),
    "cold": ("a fresh classifier on the teacher's backbone, tau 1.0", ["--set", "warm_start=false"]),
    "warm_tau0.1": ("classifier fitted to the teacher first, tau 0.1", TAU01),
    "demo": ("classifier fitted to the teacher first, tau 1.0 (the demo's settings)", []),
    "warm_1step": ("the demo's, stopped after 1 step (what the warm start alone gives)",
                   ["--set", "max_steps=1"]),
    "demo_2ep": ("the demo's, 4x the budget (2 epochs)", ["--set", "epochs=2"]),
    "demo_lr10": ("the demo's, 10x the LR", ["--set", "optim.base_lr=0.02"]),
}  # fmt: skip
COLUMNS = {"10/class": "10-per-class", "1%": "1pct"}


def run(run_dir: Path, out_dir: Path, names: list[str], columns: list[str]) -> list[dict[str, object]]:
    records = []
    for column in columns:
        ft = run_dir / "finetune" / COLUMNS[column] / "layer1" / "seed0"
        teacher = json.loads((ft / "results.json").read_text())["test"]["top1"]
        for name in names:
            what, extra = VARIANTS[name]
            dest = out_dir / COLUMNS[column] / name
            if not (dest / "results.json").is_file():
                cmd = [sys.executable, "-m", "simclrv2", "distill", "--config", str(CONFIG), "--teacher",
                       str(ft / "last.pt"), "--set", f"run_dir={dest}", *BUDGET, *extra]  # fmt: skip
                if (dest / "last.pt").is_file():
                    cmd.append("--resume")
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            res = json.loads((dest / "results.json").read_text())
            rec = {
                "column": column, "variant": name, "what": what, "teacher_top1": teacher,
                "student_top1": res["test"]["top1"], "delta": res["test"]["top1"] - teacher,
                "warm_start_agreement": res.get("warm_start_agreement"), "steps": res["step"],
                "train_seconds": res["train_seconds"], "precision": res["precision"],
            }  # fmt: skip
            print(json.dumps(rec), flush=True)
            records.append(rec)
    return records


def markdown(records: list[dict[str, object]]) -> str:
    cols = list(dict.fromkeys(str(r["column"]) for r in records))
    by = {(r["variant"], r["column"]): r for r in records}
    teacher = {c: next(r["teacher_top1"] for r in records if r["column"] == c) for c in cols}
    lines = ["| variant | " + " | ".join(f"{c} (teacher {teacher[c]:.1f})" for c in cols) + " |"]
    lines.append("|---|" + "---:|" * len(cols))
    for name in dict.fromkeys(str(r["variant"]) for r in records):
        cells = [f"{by[(name, c)]['student_top1']:.1f} ({by[(name, c)]['delta']:+.1f})" for c in cols]
        lines.append(f"| `{name}`: {VARIANTS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a finished pipeline run of configs/fashion_mnist.yaml")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    parser.add_argument("--out", type=Path, help="default: <run>/distill_warm_start/results.json")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/distillation.md")
    args = parser.parse_args(argv)
    out = args.out or args.run / "distill_warm_start" / "results.json"
    records = run(args.run, out.parent, args.variants, args.columns)
    from simclrv2.engine.pipeline import machine_description

    command = "python benchmarks/distill_warm_start.py " + " ".join(argv or sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"command": command, "machine": machine_description(), "runs": records}, indent=1)
    )
    table = markdown(records)
    print(table)
    if args.doc:
        machine = machine_description()
        block = (
            f"_`{command}` on {machine['cpu']} ({machine['threads']} threads), torch "
            f"{machine['torch']}, {records[0]['precision']}; test top-1 % of the student on the 10,000 test "
            f"images, its change against its teacher in brackets; label seed 0._\n\n{table}"
        )
        splice_block(DOC, MARK_BEGIN, MARK_END, block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
