"""Why does 2-epoch self-distillation lose to its teacher in the label-efficiency benchmark? Two variants of
row 6 at 10% labels, label seed 0, from the benchmark's own teacher (run the benchmark first):

* ``init_teacher_2ep``: the student starts from the fine-tuned teacher's backbone, not the pretrained one;
* ``init_pretrained_6ep``: the benchmark's student (pretrained backbone), 6 epochs instead of 2.

Everything else is the benchmark's distillation setting (LARS 0.002 * sqrt(B), temperature 0.1, all 60,000
training images, labels unused). Results: ``runs/distill_ablation/<variant>.json`` and stdout.

    python benchmarks/distill_ablation.py init_teacher_2ep init_pretrained_6ep
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import label_efficiency as le

RUNS = Path("runs/label_efficiency")
ROOT = RUNS / "r18_0.25x"
TEACHER = ROOT / "finetune/10pct/layer1/seed0/last.pt"
PRETRAINED = ROOT / "pretrain/last.pt"
VARIANTS = {
    "init_teacher_2ep": {"student_init": str(TEACHER), "epochs": 2},
    "init_pretrained_6ep": {"student_init": str(PRETRAINED), "epochs": 6},
}


def main(names: list[str]) -> int:
    from simclrv2.engine.distill import distill

    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if not TEACHER.is_file():
        raise SystemExit(f"{TEACHER} is missing: run python benchmarks/label_efficiency.py first")
    base = le.Bench(le.PROFILES["full"], RUNS, [], "distill_ablation").pipes["r18_0.25x"].c.distill
    out_dir = Path("runs/distill_ablation")
    for name in names:
        cfg = dataclasses.replace(
            base, run_dir=str(out_dir / name), seed=0, teacher=str(TEACHER), student="same", **VARIANTS[name]
        )
        cfg.validate()
        t0 = time.time()
        res = distill(cfg, show_progress=False)
        record = {"variant": name, "test_top1": res["test"]["top1"], "wall_seconds": time.time() - t0}
        record.update(VARIANTS[name])
        (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or list(VARIANTS)))
