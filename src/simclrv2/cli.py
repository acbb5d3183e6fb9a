"""``simclrv2 <stage>``: parse arguments, build the config, call the engine. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
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

    p = sub.add_parser(
        "finetune",
        help="stage 2: fine-tune the pretrained network from head layer k on a labeled subset",
        description="Stage 2 of SimCLRv2: backbone + projection-head layers 1..k + a new zero-initialised "
        "classifier, fine-tuned with LARS (0.005*sqrt(B), no weight decay), crop + flip, on a class-balanced "
        "labeled subset (saved as run_dir/label_indices.txt). Epochs default to 60 below 10%% labels and 30 "
        "from 10%% up. Writes config.yaml, metrics.jsonl, last.pt, eval.json, predictions.json and "
        "results.json.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_args(p)
    p.add_argument("--pretrained", metavar="CKPT", help="pretraining checkpoint (a pretrain run's last.pt)")
    p.add_argument(
        "--labels", metavar="SPEC", help="1%%, 10%%, 100%%, N/class or a subset file (default 10%%)"
    )
    p.add_argument("--from-layer", type=int, metavar="K", help="head layer to fine-tune from (0=h, 1, -1=z)")
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
            "--pretrained", metavar="CKPT", help="pretraining checkpoint (a pretrain run's last.pt)"
        )
        p.add_argument("--labels", metavar="SPEC", help="labeled training subset (default 100%%)")

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
    return parser


def _flag_overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Dedicated flags become --set overrides (applied after the YAML file and --set, so they win)."""
    out = []
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")  # JSON is YAML: strings stay strings
    return [*args.overrides, *out]


def _run_pretrain(args: argparse.Namespace) -> int:
    from simclrv2.config import PretrainConfig, load_config
    from simclrv2.engine.pretrain import pretrain

    config = load_config(PretrainConfig, args.config, args.overrides)
    results = pretrain(config, resume=args.resume)
    print(json.dumps(results, indent=2))
    return 0


def _run_finetune(args: argparse.Namespace) -> int:
    from simclrv2.config import FinetuneConfig, load_config
    from simclrv2.engine.finetune import finetune

    overrides = _flag_overrides(
        args, {"pretrained": "pretrained", "labels": "labels", "from_layer": "from_layer"}
    )
    config = load_config(FinetuneConfig, args.config, overrides)
    print(json.dumps(finetune(config, resume=args.resume), indent=2))
    return 0


def _run_linear_eval(args: argparse.Namespace) -> int:
    from simclrv2.config import LinearEvalConfig, load_config
    from simclrv2.engine.linear_eval import knn_eval, linear_eval

    config = load_config(
        LinearEvalConfig, args.config, _flag_overrides(args, {"pretrained": "pretrained", "labels": "labels"})
    )
    run = linear_eval if args.command == "linear-eval" else knn_eval
    print(json.dumps(run(config), indent=2))
    return 0


def _run_supervised(args: argparse.Namespace) -> int:
    from simclrv2.config import SupervisedConfig, load_config
    from simclrv2.engine.supervised import supervised

    config = load_config(
        SupervisedConfig, args.config, _flag_overrides(args, {"labels": "labels", "model": "backbone"})
    )
    print(json.dumps(supervised(config, resume=args.resume), indent=2))
    return 0


COMMANDS = {
    "pretrain": _run_pretrain,
    "finetune": _run_finetune,
    "linear-eval": _run_linear_eval,
    "knn": _run_linear_eval,
    "supervised": _run_supervised,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from simclrv2.checkpoint import CheckpointError
    from simclrv2.config import ConfigError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"simclrv2 {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"simclrv2 {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"simclrv2 {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
