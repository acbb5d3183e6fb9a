"""Shared helpers for the model tests: an independent, by-hand parameter count of the SimCLRv2 ResNet."""

from __future__ import annotations

from collections.abc import Callable

import pytest

BLOCKS = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
    200: [3, 24, 36, 3],
}


def hand_count_resnet_params(
    depth: int, width: float, sk_ratio: float = 0.0, se_ratio: float = 0.0, small_images: bool = False
) -> int:
    """Parameters of the SPEC §1 ResNet, written out from the architecture description (not from the code).

    A k×k conv from a to b channels without bias has k·k·a·b weights; a BN over c channels has 2c (γ, β).
    The first block of every stage has a projection shortcut (official code), 1×1 conv + BN.
    """

    def ch(c: int) -> int:
        return max(1, round(c * width))

    def bn(c: int) -> int:
        return 2 * c

    bottleneck = depth >= 50
    if small_images:
        total = 3 * 3 * 3 * ch(64) + bn(ch(64))
    elif sk_ratio > 0:  # deep stem: 3x3 to 32w, 3x3 to 32w, 3x3 to 64w
        total = (
            9 * 3 * ch(32) + bn(ch(32)) + 9 * ch(32) * ch(32) + bn(ch(32)) + 9 * ch(32) * ch(64) + bn(ch(64))
        )
    else:
        total = 7 * 7 * 3 * ch(64) + bn(ch(64))
    in_c = ch(64)
    for stage, num_blocks in enumerate(BLOCKS[depth]):
        f = ch(64 * 2**stage)
        out_c = 4 * f if bottleneck else f
        for block in range(num_blocks):
            if block == 0:
                total += in_c * out_c + bn(out_c)  # 1x1 projection (after the avg-pool for ResNet-D)
            if bottleneck:
                total += in_c * f + bn(f)  # 1x1 reduce
                if sk_ratio > 0:
                    mid = max(int(f * sk_ratio), 32)
                    total += 9 * f * 2 * f + bn(2 * f)  # 3x3 to two streams
                    total += f * mid + bn(mid) + mid * 2 * f  # 1x1 squeeze, 1x1 to 2F mixing logits
                else:
                    total += 9 * f * f + bn(f)
                total += f * out_c + bn(out_c)  # 1x1 expand
            else:
                total += 9 * in_c * f + bn(f) + 9 * f * f + bn(f)
            if se_ratio > 0:
                r = max(1, int(f * se_ratio))
                total += out_c * r + r + r * out_c + out_c  # two 1x1 convs with bias
            in_c = out_c
    return total


@pytest.fixture
def expected_resnet_params() -> Callable[..., int]:
    return hand_count_resnet_params
