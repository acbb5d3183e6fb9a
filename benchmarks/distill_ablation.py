"""What makes a short self-distillation match its teacher? An ablation on the label-efficiency benchmark's
teachers (r18_0.25x fine-tuned from head layer 1, label seed 0, one per column: 10/class, 1%, 10%).

Each variant distils the teacher into a student of the same architecture on all 60,000 training images
(labels unused unless alpha < 1) with the benchmark's distillation setting (LARS 0.002 * sqrt(B), batch 256,
no warmup) and changes one thing: where the student starts (the pretrained backbone, the fine-tuned teacher's
backbone, scratch), the budget (epochs), the temperature, or alpha (the share of the distillation loss; the
rest is cross-entropy on the teacher's labeled subset). Results: ``benchmarks/results/distill_ablation.json``
(every run), ``benchmarks/results/distill_ablation.png`` (student - teacher per column) and the table in
``docs/distillation.md`` (between markers). Run the benchmark's teachers first:

    python benchmarks/label_efficiency.py --skip-rows self,small     # pretraining + rows 1-5
    python benchmarks/distill_ablation.py                            # every variant (about 1 hour)
    python benchmarks/distill_ablation.py init_teacher_2ep           # some of them
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import label_efficiency as le

RUNS = Path("runs/label_efficiency")
ROOT = RUNS / "r18_0.25x"
PRETRAINED = ROOT / "pretrain/last.pt"
COLUMNS = ["10/class", "1%", "10%"]
OUT = le.RESULTS / "distill_ablation.json"
DOC = le.ROOT / "docs" / "distillation.md"
MARK_BEGIN, MARK_END = "<!-- distill-ablation -->", "<!-- /distill-ablation -->"

# name -> (what it tests, DistillConfig overrides). "pretrained" is resolved to the pretraining checkpoint.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "init_pretrained_2ep": ("the old benchmark setting: pretrained backbone, 2 epochs, tau 0.1",
                            {"student_init": "pretrained", "epochs": 2}),
    "init_pretrained_6ep": ("pretrained backbone, 3x the budget",
                            {"student_init": "pretrained", "epochs": 6}),
    "init_scratch_2ep": ("from scratch (the paper's start, without its 400 epochs)",
                         {"student_init": "scratch", "epochs": 2}),
    "init_teacher_2ep": ("the teacher's backbone, 2 epochs", {"student_init": "teacher", "epochs": 2}),
    "init_teacher_0.5ep": ("the teacher's backbone, half an epoch (the demo's budget)",
                           {"student_init": "teacher", "epochs": 0.5}),
    "init_teacher_2ep_tau1": ("the teacher's backbone, 2 epochs, tau 1.0 (softer targets)",
                              {"student_init": "teacher", "epochs": 2, "temperature": 1.0}),
    "init_teacher_2ep_alpha0.5": ("the teacher's backbone, 2 epochs, half the loss on the labels",
                                  {"student_init": "teacher", "epochs": 2, "alpha": 0.5}),
}  # fmt: skip


def teacher_of(column: str) -> Path:
    from simclrv2.engine.pipeline import labels_slug

    return ROOT / "finetune" / labels_slug(column) / "layer1" / "seed0" / "last.pt"


def run_variant(name: str, column: str, base: Any) -> dict[str, Any]:
    from simclrv2.engine.distill import distill
    from simclrv2.engine.pipeline import labels_slug

    overrides = dict(VARIANTS[name][1])
    if overrides.get("student_init") == "pretrained":
        overrides["student_init"] = str(PRETRAINED)
    teacher = teacher_of(column)
    run_dir = Path("runs/distill_ablation") / labels_slug(column) / name
    results_file = run_dir / "results.json"
    t0 = time.time()
    if results_file.is_file():  # finished before: read it back, unless its teacher has been retrained since
        if teacher.stat().st_mtime > results_file.stat().st_mtime:
            raise SystemExit(
                f"{results_file} was distilled from an older {teacher} (the teacher was retrained after it); "
                "move runs/distill_ablation aside to rerun the ablation on the current teachers."
            )
        res, wall = json.loads(results_file.read_text()), None
    else:
        cfg = dataclasses.replace(
            base, run_dir=str(run_dir), seed=0, teacher=str(teacher), student="same", **overrides
        )
        cfg.validate()
        res, wall = (
            distill(cfg, resume=(run_dir / "last.pt").is_file(), show_progress=False),
            time.time() - t0,
        )
    teacher_top1 = json.loads((teacher.parent / "results.json").read_text())["test"]["top1"]
    return {
        "variant": name,
        "column": column,
        "what": VARIANTS[name][0],
        "settings": VARIANTS[name][1],
        "student_top1": res["test"]["top1"],
        "teacher_top1": teacher_top1,
        "delta": res["test"]["top1"] - teacher_top1,
        "wall_seconds": wall,
        "steps": res["step"],
    }


def markdown(records: list[dict[str, Any]]) -> str:
    names = list(dict.fromkeys(r["variant"] for r in records))
    cols = [c for c in COLUMNS if any(r["column"] == c for r in records)]
    by = {(r["variant"], r["column"]): r for r in records}
    teacher = {c: next(r["teacher_top1"] for r in records if r["column"] == c) for c in cols}
    lines = [
        "| variant | " + " | ".join(f"{c} (teacher {teacher[c]:.1f})" for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name in names:
        cells = []
        for c in cols:
            r = by.get((name, c))
            cells.append("–" if r is None else f"{r['student_top1']:.1f} ({r['delta']:+.1f})")
        lines.append(f"| `{name}`: {VARIANTS[name][0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict[str, Any]], path: Path) -> Path:
    from simclrv2.report import _new_figure, _palette, _save

    names = list(dict.fromkeys(r["variant"] for r in records))
    cols = [c for c in COLUMNS if any(r["column"] == c for r in records)]
    by = {(r["variant"], r["column"]): r for r in records}
    fig = _new_figure(10.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(cols))]
        ys = [by[(name, c)]["delta"] if (name, c) in by else 0.0 for c in cols]
        ax.bar(xs, ys, width=width, label=name, color=_palette(i))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_ylabel("student - teacher, test top-1 (points)")
    ax.set_title(
        "Self-distillation of r18_0.25x on Fashion-MNIST: where the student starts, budget, tau, alpha"
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def write_doc(records: list[dict[str, Any]], command: str) -> None:
    block = (
        f"{MARK_BEGIN}\n_`{command}`; generated from `benchmarks/results/distill_ablation.json`. Test "
        "top-1 % of the student on the 10,000 test images (change against its teacher in brackets), label "
        "seed 0._\n\n" + markdown(records) + MARK_END
    )
    text = DOC.read_text() if DOC.is_file() else f"# Distillation\n\n{MARK_BEGIN}\n{MARK_END}\n"
    head, rest = text.split(MARK_BEGIN, 1)
    DOC.write_text(head + block + rest.split(MARK_END, 1)[1])


def main(names: list[str]) -> int:
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    missing = [str(teacher_of(c)) for c in COLUMNS if not teacher_of(c).is_file()]
    if missing or not PRETRAINED.is_file():
        raise SystemExit(
            f"missing {', '.join(missing) or PRETRAINED}: run "
            "python benchmarks/label_efficiency.py --skip-rows self,small first"
        )
    base = le.Bench(le.PROFILES["full"], RUNS, [], "distill_ablation").pipes["r18_0.25x"].c.distill
    previous = json.loads(OUT.read_text())["runs"] if OUT.is_file() else []
    records = [r for r in previous if r["variant"] not in names]
    for column in COLUMNS:
        for name in names:
            record = run_variant(name, column, base)
            print(json.dumps(record), flush=True)
            records.append(record)
    order = list(VARIANTS)
    records.sort(key=lambda r: (order.index(r["variant"]), COLUMNS.index(r["column"])))
    command = "python benchmarks/distill_ablation.py"
    from simclrv2.engine.pipeline import machine_description

    OUT.write_text(
        json.dumps({"command": command, "machine": machine_description(), "runs": records}, indent=1)
    )
    plot(records, OUT.with_suffix(".png"))
    write_doc(records, command)
    print(markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or list(VARIANTS)))
