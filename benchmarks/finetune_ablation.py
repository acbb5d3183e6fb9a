"""Why would fine-tuning from head layer 1 lose to a linear probe on the same frozen features? An ablation of
the fine-tuning recipe on Fashion-MNIST, from one pretrained checkpoint, on the same labels (label seed 0, or
``--seed N``: the labeled subset and the training seed):
steps (epochs), learning rate, crop augmentation (the smallest crop area), and BatchNorm (train mode, the
paper's, or frozen running statistics). The linear probe (logistic regression on frozen centre-crop
features, the pipeline's "Linear eval" row) is the reference.

    python benchmarks/finetune_ablation.py --pretrained runs/label_efficiency/r18_0.25x/pretrain/last.pt
    python benchmarks/finetune_ablation.py --pretrained runs/demo/.../pretrain/last.pt --columns 10/class 1%

Results: ``<run-dir>/finetune_ablation.json`` and a Markdown table on stdout (``--out`` to keep the JSON in
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.markers import splice_block

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist.yaml"
DOC = ROOT / "docs" / "finetuning.md"
DOC_BLOCK = "finetune-ablation"  # --doc-block: which marked block of docs/finetuning.md to write

# name -> (what changes, FinetuneConfig overrides); every variant fine-tunes from head layer 1 with one
# (LR, epochs) candidate, no search, so that each row is one setting.
COLD = {"warm_start": False}  # the paper's start (and our default): a zero classifier
WARM = {"warm_start": True}  # "linear probe, then fine-tune"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("30 epochs (the paper's at 10% labels; 60 below), the SPEC 4 LR, crops of 8-100%, BN in "
                "train mode, a zero classifier", COLD),
    "epochs_x3": ("3x the epochs", {**COLD, "epochs": 90}),
    "lr_x3": ("3x the LR", {**COLD, "lr_grid": [3.0]}),
    "lr_x3_epochs_x3": ("3x the LR and 3x the epochs", {**COLD, "lr_grid": [3.0], "epochs": 90}),
    "crop_0.3": ("crops of 30-100% area", {**COLD, "crop_min_scale": 0.3}),
    "crop_0.6": ("crops of 60-100% area", {**COLD, "crop_min_scale": 0.6}),
    "crop_0.3_lr_x3": ("crops of 30-100% area, 3x the LR", {**COLD, "crop_min_scale": 0.3, "lr_grid": [3.0]}),
    "bn_frozen": ("BN in eval mode (running statistics of pretraining kept)", {**COLD, "freeze_bn": True}),
    "warm": ("the classifier fitted on the frozen features first (warm_start=true)", WARM),
    "warm_lr_x3": ("warm start, 3x the LR", {**WARM, "lr_grid": [3.0]}),
    "warm_epochs_x3": ("warm start, 3x the epochs", {**WARM, "epochs": 90}),
    "warm_crop_0.3": ("warm start, crops of 30-100% area", {**WARM, "crop_min_scale": 0.3}),
}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    from simclrv2.config import FinetuneConfig, LinearEvalConfig, load_config
    from simclrv2.engine.finetune import finetune
    from simclrv2.engine.linear_eval import linear_eval
    from simclrv2.engine.pipeline import labels_slug

    out: dict[str, Any] = {"pretrained": str(args.pretrained), "seed": args.seed, "runs": []}
    for column in args.columns:
        col_dir = args.run_dir / labels_slug(column)
        index_file = col_dir / "label_indices.txt"
        lin_cfg = load_config(
            LinearEvalConfig, None,
            [f"run_dir={col_dir / 'linear'}", f"pretrained={args.pretrained}", f"seed={args.seed}"],
        )  # fmt: skip
        lin_cfg = dataclasses.replace(
            lin_cfg, pretrained=str(args.pretrained), labels=column, label_index_file=str(index_file)
        )
        lin_file = col_dir / "linear" / "linear_eval.json"
        lin = (
            json.loads(lin_file.read_text())
            if lin_file.is_file()
            else linear_eval(lin_cfg, show_progress=False)
        )
        out["runs"].append({"column": column, "variant": "linear probe", "top1": lin["test"]["top1"]})
        print(json.dumps(out["runs"][-1]), flush=True)
        for name in args.variants:
            what, overrides = VARIANTS[name]
            run_dir = col_dir / name
            cfg = load_config(
                FinetuneConfig, CONFIG,
                [f"run_dir={run_dir}", f"pretrained={args.pretrained}", f"seed={args.seed}"],
            )  # fmt: skip
            # 30 epochs whatever the demo's config says (the table's rows are relative to it)
            settings = {"lr_grid": [1.0], "epochs_grid": [], "epochs": 30, **overrides}
            cfg = dataclasses.replace(
                cfg, labels=column, label_index_file=str(index_file), from_layer=1, **settings
            )  # fmt: skip
            t0 = time.time()
            results_file = run_dir / "results.json"
            res = (
                json.loads(results_file.read_text())
                if results_file.is_file()
                else finetune(cfg, resume=(run_dir / "last.pt").is_file(), show_progress=False)
            )
            rec = {
                "column": column, "variant": name, "what": what, "top1": res["test"]["top1"],
                "steps": res["step"], "batch_size": res["batch_size"], "peak_lr": res["peak_lr"],
                "wall_seconds": time.time() - t0,
            }  # fmt: skip
            out["runs"].append(rec)
            print(json.dumps(rec), flush=True)
    return out


def markdown(results: dict[str, Any]) -> str:
    cols = list(dict.fromkeys(r["column"] for r in results["runs"]))
    names = list(dict.fromkeys(r["variant"] for r in results["runs"]))
    by = {(r["variant"], r["column"]): r for r in results["runs"]}
    lines = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name in names:
        label = name if name == "linear probe" else f"`{name}`: {VARIANTS[name][0]}"
        cells = [f"{by[(name, c)]['top1']:.1f}" if (name, c) in by else "–" for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrained", type=Path, required=True, help="a pretraining checkpoint (last.pt)")
    parser.add_argument("--columns", nargs="+", default=["10/class", "1%", "10%"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/finetune_ablation"))
    parser.add_argument("--seed", type=int, default=0, help="label seed: which labeled subset, and training")
    parser.add_argument("--out", type=Path, help="results JSON (default: <run-dir>/finetune_ablation.json)")
    parser.add_argument("--doc", action="store_true", help="write the table into docs/finetuning.md")
    parser.add_argument(
        "--doc-block", default=DOC_BLOCK,
        help="the block of docs/finetuning.md to write, between <!-- NAME --> and <!-- /NAME -->",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = run(args)
    out = args.out or args.run_dir / "finetune_ablation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    table = markdown(results)
    print(table)
    if args.doc:
        from simclrv2.engine.pipeline import machine_description

        m = machine_description()
        command = "python benchmarks/finetune_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
        block = (
            f"_`{command}` on {m['cpu']} ({m['threads']} threads), torch {m['torch']}; "
            f"test top-1 % on the 10,000 test images, label seed {args.seed}, "
            "fine-tuned from head layer 1._\n\n"
            f"{table}"
        )
        splice_block(DOC, f"<!-- {args.doc_block} -->", f"<!-- /{args.doc_block} -->", block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
