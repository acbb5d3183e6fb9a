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
    return parser


def _run_pretrain(args: argparse.Namespace) -> int:
    from simclrv2.config import PretrainConfig, load_config
    from simclrv2.engine.pretrain import pretrain

    config = load_config(PretrainConfig, args.config, args.overrides)
    results = pretrain(config, resume=args.resume)
    print(json.dumps(results, indent=2))
    return 0


COMMANDS = {"pretrain": _run_pretrain}


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
