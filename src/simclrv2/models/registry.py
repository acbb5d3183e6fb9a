"""Backbone names ``r{depth}_{width}x_sk{0|1}`` (SPEC §1), e.g. ``r50_2x_sk1``, ``r18_0.5x_sk0``."""

from __future__ import annotations

import re

from simclrv2.models.resnet import BLOCKS_PER_STAGE, ResNet

__all__ = ["OFFICIAL_BACKBONES", "SK_RATIO", "create_backbone", "parse_backbone_name"]

# sk1 means the ratio of the released SimCLRv2 models.
SK_RATIO = 0.0625

# The released grid (SPEC §1, §8).
OFFICIAL_BACKBONES: tuple[str, ...] = (
    "r50_1x_sk0",
    "r50_1x_sk1",
    "r50_2x_sk0",
    "r50_2x_sk1",
    "r101_1x_sk0",
    "r101_1x_sk1",
    "r101_2x_sk0",
    "r101_2x_sk1",
    "r152_1x_sk0",
    "r152_1x_sk1",
    "r152_2x_sk0",
    "r152_2x_sk1",
    "r152_3x_sk1",
)

_NAME_PATTERN = re.compile(r"r(?P<depth>\d+)_(?P<width>\d+(?:\.\d+)?)x_sk(?P<sk>[01])")


def _bad_name(name: str, reason: str) -> ValueError:
    return ValueError(
        f"bad backbone name {name!r}: {reason}. Expected 'r{{depth}}_{{width}}x_sk{{0|1}}' with depth in "
        f"{sorted(BLOCKS_PER_STAGE)} and a positive width such as 1, 2, 3, 0.5 or 0.25 "
        f"(e.g. 'r50_2x_sk1', 'r18_0.5x_sk0'). Official backbones: {', '.join(OFFICIAL_BACKBONES)}."
    )


def parse_backbone_name(name: str) -> tuple[int, float, float]:
    """Split a backbone name into ``(depth, width_multiplier, sk_ratio)``; sk1 means sk_ratio 0.0625.

    Raises ValueError naming the expected form and the official names if ``name`` does not fit.
    """
    match = _NAME_PATTERN.fullmatch(name)
    if match is None:
        raise _bad_name(name, "it does not have the expected form")
    depth = int(match["depth"])
    if depth not in BLOCKS_PER_STAGE:
        raise _bad_name(name, f"depth {depth} is not supported")
    width = float(match["width"])
    if width <= 0:
        raise _bad_name(name, "the width must be positive")
    sk_ratio = SK_RATIO if match["sk"] == "1" else 0.0
    return depth, width, sk_ratio


def create_backbone(name: str, small_images: bool = False, tf_same_pool: bool = False) -> ResNet:
    """Build the ResNet named ``name`` (see :func:`parse_backbone_name`), optionally with the small stem;
    ``tf_same_pool``: TF's "SAME" stem max-pool, for converted official weights (SPEC §1)."""
    depth, width, sk_ratio = parse_backbone_name(name)
    return ResNet(depth, width, sk_ratio=sk_ratio, small_images=small_images, tf_same_pool=tf_same_pool)
