"""The label-efficiency experiment through the user's door (issue 14): Fashion-MNIST written as a folder of
PNGs (10 labeled images per class in labeled/<class>/, the rest of the training split as the unlabeled pool,
the test split as test/<class>/), run with ``simclrv2 pipeline --data`` at the label-efficiency benchmark's
settings (seed 0; rows: supervised, fine-tuned from head layer 1, self-distilled) and compared with that
benchmark's simulated-subset rows (``benchmarks/results/label_efficiency_fashion_mnist.json``).

    python benchmarks/user_folder.py                 # about 40 min on the 2-core development CPU
    python benchmarks/user_folder.py --readme        # also write the comparison into README.md

The labeled images are exactly label seed 0's 10/class subset of the simulated benchmark
(:func:`simclrv2.data.subsets.label_fraction_indices`), so both runs fine-tune on the same 100 images.
Writes ``benchmarks/results/user_folder_fashion_mnist.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.markers import splice_block

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIMULATED = RESULTS / "label_efficiency_fashion_mnist.json"
OUT = RESULTS / "user_folder_fashion_mnist.json"
README = ROOT / "README.md"
MARK_BEGIN, MARK_END = "<!-- user-folder -->", "<!-- /user-folder -->"


def class_dir_name(name: str) -> str:
    """A folder name for a class name (Fashion-MNIST's "T-shirt/top" has a slash)."""
    return name.replace("/", "-")


def write_fashion_mnist_folder(
    root: Path,
    labeled_per_class: int = 10,
    unlabeled: int | None = None,
    test: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fashion-MNIST as a user's folder of 28x28 grayscale PNGs (layout 1); returns what went where.

    ``labeled/<class>/``: ``labeled_per_class`` training images per class, label seed ``seed``'s subset of
    the simulated benchmark; ``unlabeled/``: ``unlabeled`` of the other training images (all when None),
    in shards of 1,000 (any nesting is allowed); ``test/<class>/``: the first ``test`` test images."""
    import torch
    from PIL import Image

    from simclrv2.data import load_dataset
    from simclrv2.data.subsets import label_fraction_indices

    train, test_split = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images is not None and test_split.images is not None
    labeled = label_fraction_indices(train.labels, f"{labeled_per_class}/class", seed)
    rest = np.setdiff1d(np.arange(len(train)), labeled.numpy())
    if unlabeled is not None:
        rest = np.random.default_rng(seed).permutation(rest)[:unlabeled]
        rest.sort()
    names = [class_dir_name(c) for c in train.classes]

    def save(path: Path, image: torch.Tensor) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path, compress_level=1)
        return str(path)

    out: dict[str, Any] = {"labeled": [], "unlabeled": [], "test": []}
    for i in labeled.tolist():
        c = int(train.labels[i])
        out["labeled"].append(save(root / "labeled" / names[c] / f"train{i:05d}.png", train.images[i]))
    for j, i in enumerate(rest.tolist()):
        out["unlabeled"].append(
            save(root / "unlabeled" / f"part{j // 1000:02d}" / f"train{i:05d}.png", train.images[i])
        )
    n_test = len(test_split) if test is None else min(test, len(test_split))
    for i in range(n_test):
        c = int(test_split.labels[i])
        out["test"].append(save(root / "test" / names[c] / f"test{i:05d}.png", test_split.images[i]))
    out["labeled_indices"] = labeled.tolist()
    return out


# The label-efficiency benchmark's settings for the 10/class column, seed 0 (benchmarks/label_efficiency.py:
# configs/fashion_mnist.yaml + COMMON + its grids and pretraining length), given to `pipeline --data` as a
# config file and --set: what a user who wants that recipe would type.
def benchmark_settings() -> list[str]:
    from benchmarks import label_efficiency as le

    profile = le.PROFILES["full"]
    return [
        *le.COMMON,
        "labels=[all]",  # every labeled image of the folder: the 10/class subset
        "label_seeds=[0]",
        "finetune_layers=[1]",
        "distill_students=[same]",
        f"pretrain.epochs={profile['pretrain_epochs']}",
        "pretrain.model.backbone=r18_0.25x_sk0",
        f"finetune.lr_grid={json.dumps(le.LR_GRID['finetune'])}",
        f"finetune.epochs_grid={json.dumps(le.EPOCHS_GRID['finetune']['10/class'])}",
        f"supervised.lr_grid={json.dumps(le.LR_GRID['supervised'])}",
        f"supervised.epochs_grid={json.dumps(le.EPOCHS_GRID['supervised']['10/class'])}",
    ]


ROWS = {  # our pipeline's row -> the simulated benchmark's row
    "Supervised (labels only)": "1. Supervised, labeled subset only",
    "Linear eval": "3. Linear evaluation",
    "Fine-tuned (layer 1)": "5. Fine-tuned from head layer 1",
    "Self-distilled": "6. Self-distilled from 5",
}


def simulated_rows() -> dict[str, dict[str, Any]]:
    """The simulated-subset benchmark's 10/class cells: mean, std over label seeds, and seed 0's run."""
    sim = json.loads(SIMULATED.read_text())
    out: dict[str, dict[str, Any]] = {}
    for ours, theirs in ROWS.items():
        cell = sim["table"][f"r18_0.25x: {theirs}"]["10/class"]
        out[ours] = {"mean": cell["mean"], "std": cell["std"], "n": cell["n"]}
    for run in sim["runs"]:
        if run.get("model") != "r18_0.25x" or run.get("labels") != "10/class" or run.get("seed") != 0:
            continue
        res, kind = run["results"], run["kind"]
        top1 = (res.get("test") or {}).get("top1")
        if kind == "finetune" and res.get("from_layer") == 1:
            out["Fine-tuned (layer 1)"]["seed0"] = top1
        elif kind == "supervised":
            out["Supervised (labels only)"]["seed0"] = top1
        elif kind == "linear_eval":
            out["Linear eval"]["seed0"] = top1
        elif kind == "distill" and "/self/" in run["run_dir"]:
            out["Self-distilled"]["seed0"] = top1
    return out


def pool_accuracy(run_dir: Path) -> dict[str, float]:
    """How right pool_predictions.csv is (the pool's true labels are known here: the file names carry the
    training-split index), overall and in its least and most confident tenths."""
    import csv
    import re

    from simclrv2.data import load_dataset

    train = load_dataset("fashion-mnist", "train")
    names = [class_dir_name(c) for c in train.classes]
    with (run_dir / "pool_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    ok = []
    for r in rows:
        index = int(re.search(r"train(\d+)\.png$", r["path"]).group(1))  # type: ignore[union-attr]
        ok.append(names[int(train.labels[index])] == r["prediction"])
    tenth = len(ok) // 10
    return {
        "images": len(ok),
        "top1": 100 * sum(ok) / len(ok),
        "least_confident_tenth_top1": 100 * sum(ok[:tenth]) / tenth,
        "most_confident_tenth_top1": 100 * sum(ok[-tenth:]) / tenth,
    }


def markdown(result: dict[str, Any]) -> str:
    seeds = max(cell["simulated"]["n"] for cell in result["rows"].values())
    lines = [
        f"_`{result['command']}` on {result['machine']['cpu']} ({result['machine']['threads']} threads), "
        f"torch {result['machine']['torch']}: {result['wall_seconds'] / 60:.0f} min. Test top-1 % on the "
        "10,000 test images, 10 labels per class; simulated = `benchmarks/label_efficiency.py` (labels "
        f"hidden in the training split), mean ± std over its {seeds} label seeds, and seed 0 alone._",
        "",
        "| row | folder (`pipeline --data`), seed 0 | simulated, seed 0 | simulated, mean ± std "
        "| within 2 std |",
        "|---|---:|---:|---:|---|",
    ]
    for row, cell in result["rows"].items():
        sim = cell["simulated"]
        lines.append(
            f"| {row} | {cell['folder']:.1f} | {sim.get('seed0', float('nan')):.1f} | "
            f"{sim['mean']:.1f} ± {sim['std']:.1f} | {'yes' if cell['within_2std'] else 'no'} |"
        )
    pool = result["pool"]
    lines += [
        "",
        f"`pool_predictions.csv` labels the {pool['images']:,} unlabeled images {pool['top1']:.1f}% right "
        f"(their true labels are known here); its least confident tenth "
        f"{pool['least_confident_tenth_top1']:.1f}%, its most confident tenth "
        f"{pool['most_confident_tenth_top1']:.1f}%: the order says where labeling more pays.",
    ]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    splice_block(README, MARK_BEGIN, MARK_END, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--folder", default="data/fashion_mnist_folder", help="where the PNG folder is written"
    )
    parser.add_argument("--run-dir", default="runs/user_folder_fashion_mnist")
    parser.add_argument("--readme", action="store_true", help="write the comparison into README.md")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--report-only", action="store_true", help="only read a finished run (its own wall times) and report"
    )
    args = parser.parse_args(argv)
    from simclrv2.cli import main as cli
    from simclrv2.engine.pipeline import machine_description

    given = [a for a in (sys.argv[1:] if argv is None else argv) if a not in ("--report-only", "--readme")]
    command = " ".join(["python benchmarks/user_folder.py", *given])  # the run, not its re-reading

    folder = Path(args.folder)
    if not (folder / "labeled").is_dir():
        t0 = time.time()
        info = write_fashion_mnist_folder(folder)
        counts = ", ".join(f"{len(info[k])} {k}" for k in ("labeled", "unlabeled", "test"))
        print(f"wrote {counts} PNGs to {folder} in {time.time() - t0:.0f} s")
    config = ROOT / "configs" / "fashion_mnist.yaml"
    argv_cli = [
        "pipeline",
        "--data",
        str(folder),
        "--config",
        str(config),
        "--set",
        f"run_dir={args.run_dir}",
    ]
    argv_cli += [arg for item in benchmark_settings() for arg in ("--set", item)]
    if not args.report_only:
        code = cli(argv_cli)
        if code != 0:
            return code
    ours = json.loads((Path(args.run_dir) / "results.json").read_text())
    sim = simulated_rows()
    rows = {}
    for row, cell in sim.items():
        value = ours["table"][row]["all"]["mean"]
        rows[row] = {
            "folder": value,
            "simulated": cell,
            "within_2std": abs(value - cell["mean"]) <= 2 * cell["std"],
        }
    result = {
        "benchmark": "user_folder",
        "command": command,
        "cli": "simclrv2 " + " ".join(argv_cli),
        "rows": rows,
        "pool": pool_accuracy(Path(args.run_dir)),
        "model_checks": ours["model"]["checks"],
        "pretrain_knn_labeled_bank": ours["pretrain"].get("knn"),
        "wall_seconds": ours["wall_seconds"]["total"],  # the pipeline's own, from its results.json
        "stage_seconds": ours["wall_seconds"],
        "machine": {**machine_description(), **{"threads": ours["machine"]["threads"]}},
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    text = markdown(result)
    print(text)
    if args.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
