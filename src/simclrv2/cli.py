"""``simclrv2 <stage>``: parse arguments, build the config, call the engine. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence

from simclrv2 import __version__

EPILOG = """\
Settings come from the dataclass defaults, then the YAML file (--config), then --set overrides, e.g.
  simclrv2 pretrain --config configs/fashion_mnist.yaml --set epochs=5 --set optim.base_lr=0.3
Every key is listed in the README ("Configuration") and in the run directory's config.yaml."""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", metavar="FILE", help="YAML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, dotted keys for sections (repeatable), e.g. --set data.root=/data",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="cpu, cuda (under torchrun: each rank's GPU LOCAL_RANK) or auto (the config's default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simclrv2",
        description="SimCLRv2 in PyTorch: contrastive pretraining, few-label fine-tuning, distillation.",
    )
    parser.add_argument("--version", action="version", version=f"simclrv2 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "pretrain",
        help="stage 1: contrastive pretraining (NT-Xent, LARS, 3-layer head) on unlabeled images",
        description="Stage 1 of SimCLRv2: pretrain a ResNet + projection head with NT-Xent on all training "
        "images (labels unused). Writes config.yaml, metrics.jsonl, TensorBoard logs, last.pt and "
        "results.json into run_dir, and reports weighted kNN accuracy on the test split.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from run_dir/last.pt")
    p.add_argument(
        "--grad-checkpoint",
        action="store_true",
        default=None,
        help="activation checkpointing per residual block (= --set model.grad_checkpoint=true): "
        "much less memory, about 30%% slower",
    )

    p = sub.add_parser(
        "finetune",
        help="stage 2: fine-tune the pretrained network from head layer k on a labeled subset",
        description="Stage 2 of SimCLRv2: backbone + projection-head layers 1..k + a new zero-initialised "
        "classifier, fine-tuned with LARS (0.005*sqrt(B), 0.002*sqrt(B) for wider or SK nets; no weight "
        "decay), crop + flip, on a class-balanced labeled subset (saved as run_dir/label_indices.txt), "
        "repeated for N*epochs//B+1 steps (the official rule). Epochs default to 60 below 10%% labels and 30 "
        "from 10%% up; the head layer to 1 below 100%% and 0 at 100%%. Writes config.yaml, metrics.jsonl, "
        "last.pt, eval.json, predictions.json and results.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--pretrained", metavar="CKPT", help="pretraining checkpoint (a pretrain run's last.pt, or zoo:ARCH)"
    )
    p.add_argument(
        "--labels", metavar="SPEC", help="1%%, 10%%, 100%%, N/class or a subset file (default 10%%)"
    )
    p.add_argument(
        "--from-layer", type=int, metavar="K",
        help="head layer to fine-tune from (0=h, 1, -1=z; default 1 below 100%% labels, 0 at 100%%)",
    )  # fmt: skip
    _add_use_ema_arg(p)
    p.add_argument("--resume", action="store_true", help="continue from run_dir/last.pt")

    for name, what in (("linear-eval", "linear evaluation"), ("knn", "weighted kNN evaluation")):
        p = sub.add_parser(
            name,
            help=f"{what} of a pretrained backbone (frozen, features h)",
            description=(
                "Linear evaluation: frozen backbone (eval mode), features h of centre-cropped images "
                "computed once, then multinomial logistic regression (L-BFGS, L2 chosen on a class-balanced "
                "validation split of the labeled training images) on the cached features. Writes "
                "linear_eval.json."
                if name == "linear-eval"
                else "Weighted kNN (k=200, T=0.1, cosine) on frozen backbone features h of the labeled "
                "training images, top-1/top-5 on the test split. Writes knn.json."
            ),
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_config_args(p)
        p.add_argument(
            "--pretrained",
            metavar="CKPT",
            help="pretraining checkpoint (a pretrain run's last.pt, or zoo:ARCH)",
        )
        p.add_argument("--labels", metavar="SPEC", help="labeled training subset (default 100%%)")
        _add_use_ema_arg(p)
        if name == "linear-eval":
            p.add_argument(
                "--augmented",
                action="store_true",
                default=None,
                help="the paper's ImageNet protocol: crop + flip views through the frozen network, SGD",
            )

    p = sub.add_parser(
        "supervised",
        help="baseline: the same backbone trained from scratch on the labeled subset only",
        description="Supervised baseline: backbone (small-image stem as in pretraining) + zero-init "
        "classifier on h, trained from scratch on the labeled subset with momentum SGD (0.1*B/256, wd 1e-4, "
        "cosine), crop + flip. The LR is chosen from base*lr_grid on a class-balanced validation split of "
        "the labeled subset (never the test split), then the model is retrained on all labels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--labels", metavar="SPEC", help="1%%, 10%%, 100%%, N/class or a subset file (default 10%%)"
    )
    p.add_argument("--model", metavar="NAME", help="backbone name, e.g. r18_1x_sk0, r50_1x_sk0")
    p.add_argument("--resume", action="store_true", help="continue the final run from run_dir/last.pt")

    p = sub.add_parser(
        "distill",
        help="stage 3: distill a fine-tuned teacher into a student on all unlabeled training images",
        description="Stage 3 of SimCLRv2: the fine-tuned teacher (frozen, eval mode) labels every training "
        "image with softened predictions; a student (the teacher's backbone without projection head for "
        "self-distillation, or a smaller backbone) learns them: L = -sum P_T(y|x;T) log P_S(y|x;T) "
        "(SPEC 6), optionally mixed with the labeled loss (alpha < 1). Teacher and student see the same "
        "crop + flip view. Temperature defaults to 0.1 for self-distillation and 1.0 big-to-small.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--teacher",
        metavar="CKPT",
        help="fine-tuned teacher (a finetune run's last.pt, or zoo:CATEGORY/ARCH)",
    )
    p.add_argument(
        "--student", metavar="NAME", help="student backbone, or 'same' (default: self-distillation)"
    )
    p.add_argument(
        "--temperature", type=float, metavar="T", help="softmax temperature (default 0.1 self, 1.0)"
    )
    p.add_argument(
        "--alpha", type=float, metavar="A", help="distillation weight; 1 - A on labels (default 1)"
    )
    p.add_argument("--resume", action="store_true", help="continue from run_dir/last.pt")

    p = sub.add_parser(
        "pipeline",
        help="the whole recipe: pretrain, linear eval, fine-tune, distill, supervised baseline, report",
        description="Runs pretrain -> linear eval -> fine-tune (each label subset, each head layer) -> "
        "distill -> supervised baseline, then writes results.json and report.md with figures into run_dir. "
        "Each stage has its own directory; a finished stage is skipped and an interrupted one resumes when "
        "the same command is run again. With --data FOLDER (your own images: FOLDER/labeled/<class>/ + "
        "FOLDER/unlabeled/ [+ FOLDER/test/<class>/], or FOLDER/labels.csv [+ test.csv]) no config is "
        "needed: the recipe is derived from the images and said before any work, and run_dir also gets "
        "model/ (the final model: checkpoint, TorchScript, ONNX) and pool_predictions.csv.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument(
        "--data",
        metavar="FOLDER",
        help="your own images: a few labeled, many unlabeled (see the README, 'Your own images')",
    )
    p.add_argument(
        "--student",
        metavar="NAME",
        help="distill into this backbone, or 'same' (self-distillation, the default)",
    )
    _add_use_commands(sub)
    _add_interop_commands(sub)
    return parser


def _add_interop_commands(sub: argparse._SubParsersAction) -> None:
    """``convert`` and ``zoo``: the published SimCLRv2 models (TensorFlow checkpoints)."""
    from simclrv2.interop.convert import CATEGORIES

    p = sub.add_parser(
        "convert",
        help="convert an official SimCLRv2 TensorFlow checkpoint (TF1 or TF2) into a simclrv2 checkpoint",
        description="Reads a TF1 checkpoint (a directory or a model.ckpt-N prefix) or a TF2 checkpoint / "
        "SavedModel directory without TensorFlow, detects depth, width, SK and heads, maps every variable "
        "(or refuses, listing what does not fit) and writes a pretraining checkpoint (category pretrained: "
        "for finetune --pretrained, linear-eval, knn) or a classifier checkpoint (finetuned_*, supervised, "
        "distill_*: for predict, export, distill --teacher) with ImageNet's class names. The category is "
        "read "
        "from the path (.../finetuned_10pct/r50_1x_sk0/) unless given.",
    )
    p.add_argument("source", metavar="SRC", help="TF checkpoint directory, prefix, .index file or SavedModel")
    p.add_argument("--output", "-o", required=True, metavar="DST.pt", help="the simclrv2 checkpoint to write")
    p.add_argument("--category", choices=CATEGORIES, help="which published model it is (default: from SRC)")
    p.add_argument(
        "--from-layer",
        type=int,
        metavar="K",
        help="classifier input: 0 = h, 1 = head layer 1 (default: by category, 1 for finetuned_1pct/10pct)",
    )
    p.add_argument("--ema", action="store_true", help="take the EMA copies (ema_model/...) of the weights")
    p.add_argument("--force", action="store_true", help="overwrite an existing DST.pt")

    p = sub.add_parser(
        "zoo",
        help="list the published SimCLRv2 models; with references, download and convert them",
        description="Without arguments: the 13 architectures x 7 categories of the official release with "
        "the official README's ImageNet top-1 accuracies and parameter counts, and which are in the cache. "
        "With references (zoo:finetuned_10pct/r50_2x_sk1, or r50_2x_sk1 for the pretrained model): download "
        "(resumable) and convert them into the cache, printing the converted checkpoints' paths. Any "
        "--pretrained/--teacher/--model option also takes a zoo: reference.",
    )
    p.add_argument("refs", nargs="*", metavar="REF", help="zoo:[CATEGORY/]ARCH to fetch and convert")


def _add_use_ema_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--use-ema",
        action="store_true",
        default=None,
        help="use the EMA encoder of a run pretrained with memory.size > 0 instead of the online network",
    )


def _add_use_commands(sub: argparse._SubParsersAction) -> None:
    """``predict`` and ``export``: using a trained classifier (finetune, supervised or distill last.pt)."""
    p = sub.add_parser(
        "predict",
        help="classify image files with a trained classifier (finetune/supervised/distill checkpoint)",
        description="Classify images (png, jpg, jpeg, bmp, webp; folders searched recursively, sorted) with "
        "a classifier checkpoint, using the evaluation preprocessing it was tested with (RGB in [0, 1], "
        "shorter side to the dataset's image size, centre crop). Prints 'path<TAB>class:prob ...' per "
        "image, best first, or writes --output as CSV (path, rank, class, probability) or JSON. "
        "Unreadable files are skipped with a warning.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders")
    p.add_argument(
        "--model",
        required=True,
        metavar="CKPT",
        help="classifier checkpoint (last.pt), export or zoo: reference",
    )
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--output", "-o", metavar="FILE", help="write FILE.csv or FILE.json instead of printing")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per forward (default 64)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default auto)")

    p = sub.add_parser(
        "export",
        help="export a trained classifier with its preprocessing (TorchScript, ONNX or safetensors)",
        description="torchscript: preprocessing + model traced for inputs (N, C, H, W) of one dtype "
        "(uint8 0..255 or float32 0..1), channel count and size (default: the dataset's image size); "
        "loads with plain torch.jit.load, class names in the extra file simclrv2.json. onnx: the same "
        "graph as ONNX (opset 18; input 'images', output 'logits'; class names in the metadata entry "
        "'simclrv2'), checked with onnxruntime; needs `pip install 'simclrv2[export]'`. safetensors: "
        "model.safetensors + model.json (architecture, classes, image sizes), read back by "
        "simclrv2.load_classifier; needs `pip install safetensors`.",
    )
    p.add_argument(
        "--model", required=True, metavar="CKPT", help="classifier checkpoint (last.pt) or zoo: ref"
    )
    p.add_argument("--format", required=True, choices=["torchscript", "onnx", "safetensors"])
    p.add_argument(
        "--output",
        "-o",
        metavar="PATH",
        help="default: model.torchscript.pt or model.safetensors (+ model.json) next to CKPT",
    )
    p.add_argument("--size", type=int, metavar="PX", help="torchscript: input H = W (default: dataset's)")
    p.add_argument("--channels", type=int, choices=[1, 3], default=3, help="torchscript: input channels")
    p.add_argument("--dtype", choices=["uint8", "float32"], default="uint8", help="torchscript: input dtype")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")


def _flag_overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Dedicated flags become --set overrides (applied after the YAML file and --set, so they win)."""
    out = []
    mapping = {"device": "device", **mapping}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")  # JSON is YAML: strings stay strings
    return [*args.overrides, *out]


def _print(text: str) -> None:
    """Results on stdout once, from rank 0 (every rank runs the command under torchrun)."""
    from simclrv2.distributed import is_main_process

    if is_main_process():
        print(text)


def _run_pretrain(args: argparse.Namespace) -> int:
    from simclrv2.config import PretrainConfig, load_config
    from simclrv2.engine.pretrain import pretrain

    overrides = _flag_overrides(args, {"grad_checkpoint": "model.grad_checkpoint"})
    config = load_config(PretrainConfig, args.config, overrides)
    results = pretrain(config, resume=args.resume)
    _print(json.dumps(results, indent=2))
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from simclrv2.config import FinetuneConfig, load_config
    from simclrv2.engine.finetune import finetune

    overrides = _flag_overrides(
        args,
        {"pretrained": "pretrained", "labels": "labels", "from_layer": "from_layer", "use_ema": "use_ema"},
    )
    config = load_config(FinetuneConfig, args.config, overrides)
    _print(json.dumps(finetune(config, resume=args.resume), indent=2))
    return 0


def _run_linear_eval(args: argparse.Namespace) -> int:
    from simclrv2.config import LinearEvalConfig, load_config
    from simclrv2.engine.linear_eval import knn_eval, linear_eval

    config = load_config(
        LinearEvalConfig,
        args.config,
        _flag_overrides(
            args,
            {"pretrained": "pretrained", "labels": "labels", "augmented": "augmented", "use_ema": "use_ema"},
        ),
    )
    run = linear_eval if args.command == "linear-eval" else knn_eval
    _print(json.dumps(run(config), indent=2))
    return 0


def _run_supervised(args: argparse.Namespace) -> int:
    from simclrv2.config import SupervisedConfig, load_config
    from simclrv2.engine.supervised import supervised

    config = load_config(
        SupervisedConfig, args.config, _flag_overrides(args, {"labels": "labels", "model": "backbone"})
    )
    _print(json.dumps(supervised(config, resume=args.resume), indent=2))
    return 0


def _run_distill(args: argparse.Namespace) -> int:
    from simclrv2.config import DistillConfig, load_config
    from simclrv2.engine.distill import distill

    mapping = {"teacher": "teacher", "student": "student", "temperature": "temperature", "alpha": "alpha"}
    config = load_config(DistillConfig, args.config, _flag_overrides(args, mapping))
    _print(json.dumps(distill(config, resume=args.resume), indent=2))
    return 0


def _run_pipeline(args: argparse.Namespace) -> int:
    from simclrv2.config import PipelineConfig, load_config
    from simclrv2.engine.pipeline import Pipeline

    overrides = list(args.overrides)
    if args.device is not None:  # every stage's section
        sections = ("pretrain", "finetune", "linear_eval", "distill", "supervised")
        overrides += [f"{section}.device={json.dumps(args.device)}" for section in sections]
    if args.student is not None:
        overrides.append(f"distill_students={json.dumps([args.student])}")
    command = " ".join(["simclrv2", *sys.argv[1:]])
    if args.data is not None:
        from simclrv2.engine.folder import folder_pipeline

        pipe = folder_pipeline(args.data, args.config, overrides, command=command)
        results, config = pipe.run(), pipe.c
        _print(f"model: {config.run_dir}/model/  pool labels: {config.run_dir}/pool_predictions.csv")
    else:
        config = load_config(PipelineConfig, args.config, overrides)
        results = Pipeline(config, command=command).run()
    _print(json.dumps({"table": results["table"], "wall_seconds": results["wall_seconds"]}, indent=2))
    _print(f"report: {config.run_dir}/report.md")
    return 0


def _run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simclrv2.engine.runtime import resolve_device
    from simclrv2.inference import (
        find_images,
        format_prediction,
        load_classifier,
        predict_files,
        write_predictions,
    )

    if args.topk < 1 or args.batch_size < 1:
        raise ValueError(f"--topk and --batch-size must be >= 1, got {args.topk} and {args.batch_size}")
    if args.output and Path(args.output).suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"--output {args.output}: expected a file name ending in .csv or .json")
    files = find_images(args.inputs)
    try:
        classifier = load_classifier(args.model, resolve_device(args.device))
    except ImportError as err:  # a .safetensors export without the safetensors package
        print(f"simclrv2 predict: error: {err}", file=sys.stderr)
        return 2

    def warn(path: Path, reason: str) -> None:
        print(f"simclrv2 predict: warning: skipping unreadable image {path} ({reason})", file=sys.stderr)

    preds, skipped = predict_files(classifier, files, args.topk, args.batch_size, on_skip=warn)
    if not preds:
        raise ValueError(f"none of the {len(files)} image files could be read")
    if skipped:
        print(f"simclrv2 predict: warning: skipped {len(skipped)} of {len(files)} files", file=sys.stderr)
    if args.output:
        write_predictions(args.output, preds, skipped)
        print(f"simclrv2 predict: {len(preds)} images -> {args.output}")
    else:
        for pred in preds:
            print(format_prediction(pred))
    return 0


def _run_export(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    import torch

    from simclrv2.checkpoint import resolve_checkpoint_path
    from simclrv2.inference import (
        SAFETENSORS_MISSING,
        export_safetensors,
        export_torchscript,
        load_classifier,
    )

    args.model = str(resolve_checkpoint_path(args.model))  # a zoo: reference -> its converted checkpoint
    torchscript = args.format == "torchscript"
    if args.format == "onnx":
        return _export_onnx(args)
    if not torchscript and importlib.util.find_spec("safetensors") is None:
        print(f"simclrv2 export: error: {SAFETENSORS_MISSING}", file=sys.stderr)
        return 2
    default = "model.torchscript.pt" if torchscript else "model.safetensors"
    out = Path(args.output) if args.output else Path(args.model).parent / default
    if not torchscript and out.suffix != ".safetensors":
        raise ValueError(f"--output {out}: a safetensors export must end in .safetensors")
    targets = [out] if torchscript else [out, out.with_suffix(".json")]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise FileExistsError(f"{', '.join(existing)} already exists: pass --force to overwrite it")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be positive, got {args.size}")
    classifier = load_classifier(args.model, "cpu")
    if torchscript:
        dtype = torch.uint8 if args.dtype == "uint8" else torch.float32
        export_torchscript(classifier, out, args.size, args.channels, dtype)
        side = args.size or classifier.load_size
        print(
            f"{out}: TorchScript, input {args.dtype} (N, {args.channels}, {side}, {side}) "
            f"({'0..255' if args.dtype == 'uint8' else '0..1'}), output logits over "
            f"{len(classifier.classes)} classes; load with torch.jit.load"
        )
    else:
        weights, meta = export_safetensors(classifier, out)
        print(f"{weights} + {meta}: load with simclrv2.load_classifier({str(weights)!r})")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from simclrv2.interop.convert import convert_checkpoint

    out = Path(args.output)
    if out.suffix != ".pt":
        raise ValueError(f"--output {out}: expected a .pt file name")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists: pass --force to overwrite it")
    convert_checkpoint(args.source, out, args.category, args.from_layer, args.ema)
    return 0


def _run_zoo(args: argparse.Namespace) -> int:
    from simclrv2.interop import zoo

    if not args.refs:
        print(zoo.format_table())
        return 0
    for ref in args.refs:
        print(zoo.resolve(ref))
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    """``export --format onnx``: preprocessing + model as ONNX, checked with onnxruntime on random inputs."""
    from pathlib import Path

    import torch

    from simclrv2.inference import ONNX_MISSING, export_onnx, load_classifier, onnx_logits

    out = Path(args.output) if args.output else Path(args.model).parent / "model.onnx"
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} already exists: pass --force to overwrite it")
    if args.size is not None and args.size < 1:
        raise ValueError(f"--size must be positive, got {args.size}")
    classifier = load_classifier(args.model, "cpu")
    dtype = torch.uint8 if args.dtype == "uint8" else torch.float32
    side = args.size or classifier.load_size
    try:
        export_onnx(classifier, out, side, args.channels, dtype)
        x = torch.randint(0, 256, (4, args.channels, side, side), dtype=torch.uint8)
        x = x if dtype == torch.uint8 else x.float() / 255
        with torch.inference_mode():
            diff = float((onnx_logits(out, x) - classifier(x)).abs().max())
    except ImportError:
        print(f"simclrv2 export: error: {ONNX_MISSING}", file=sys.stderr)
        return 2
    print(
        f"{out}: ONNX, input 'images' {args.dtype} (N, {args.channels}, {side}, {side}), output 'logits' "
        f"over {len(classifier.classes)} classes; onnxruntime vs the checkpoint: max |difference| {diff:.2g}"
    )
    return 0


COMMANDS = {
    "pretrain": _run_pretrain,
    "finetune": _run_finetune,
    "linear-eval": _run_linear_eval,
    "knn": _run_linear_eval,
    "supervised": _run_supervised,
    "distill": _run_distill,
    "pipeline": _run_pipeline,
    "predict": _run_predict,
    "export": _run_export,
    "convert": _run_convert,
    "zoo": _run_zoo,
}


def _one_line(err: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the worker's
    traceback), only its last line, the original message."""
    text = str(err)
    if "Traceback (most recent call last)" in text:
        text = [line for line in text.splitlines() if line.strip()][-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (config, data, checkpoint, disk), 3 stopped (NaN/Inf loss, out of
    memory), 75 interrupted by SIGTERM/SIGINT after a checkpoint (resumable: rerun with --resume), 130/143
    stopped at once by a second SIGINT/SIGTERM (the previous checkpoint is intact)."""
    args = build_parser().parse_args(argv)
    from simclrv2.checkpoint import CheckpointError
    from simclrv2.config import ConfigError
    from simclrv2.data.datasets import BadImagesError
    from simclrv2.engine.runtime import EXIT_INTERRUPTED, TrainingInterrupted, TrainingOutOfMemory

    bad_input = (ConfigError, CheckpointError, BadImagesError, FileNotFoundError, FileExistsError, ValueError)
    try:
        return COMMANDS[args.command](args)
    except bad_input as err:
        print(f"simclrv2 {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (FloatingPointError, TrainingOutOfMemory) as err:
        print(f"simclrv2 {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except TrainingInterrupted as err:
        print(f"simclrv2 {args.command}: interrupted: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(
            f"simclrv2 {args.command}: stopped at once by {signal.Signals(signum).name}; any checkpoint "
            "already written is intact (rerun with --resume to continue from it)",
            file=sys.stderr,
        )
        return 128 + signum


if __name__ == "__main__":
    raise SystemExit(main())
