"""Backbone names (SPEC §1): parsing, building, helpful errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from simclrv2.models import OFFICIAL_BACKBONES, ResNet, create_backbone, parse_backbone_name

# "Param (M)" column of the official README / the paper's Table 1, rounded by the authors.
OFFICIAL_PARAMS_M = {
    "r50_1x_sk0": 24,
    "r50_1x_sk1": 35,
    "r50_2x_sk0": 94,
    "r50_2x_sk1": 140,
    "r101_1x_sk0": 43,
    "r101_1x_sk1": 65,
    "r101_2x_sk0": 170,
    "r101_2x_sk1": 257,
    "r152_1x_sk0": 58,
    "r152_1x_sk1": 89,
    "r152_2x_sk0": 233,
    "r152_2x_sk1": 354,
    "r152_3x_sk1": 795,
}


def test_official_grid() -> None:
    assert len(OFFICIAL_BACKBONES) == 13
    assert set(OFFICIAL_BACKBONES) == set(OFFICIAL_PARAMS_M)


@pytest.mark.parametrize("name", OFFICIAL_BACKBONES)
def test_official_names_build_with_the_published_sizes(
    name: str, expected_resnet_params: Callable[..., int]
) -> None:
    depth, width, sk_ratio = parse_backbone_name(name)
    with torch.device("meta"):  # shapes only: R152 3x+SK has 795M parameters
        model = create_backbone(name)
    assert isinstance(model, ResNet)
    assert (model.depth, model.width_multiplier, model.sk_ratio) == (depth, width, sk_ratio)
    assert model.num_features == int(2048 * width)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected_resnet_params(depth, width, sk_ratio)
    # The published counts are rounded (23.5M is listed as 24M, 232.3M as 233M); 1M catches any missing part.
    assert abs(n_params / 1e6 - OFFICIAL_PARAMS_M[name]) < 1.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("r50_1x_sk0", (50, 1.0, 0.0)),
        ("r50_2x_sk1", (50, 2.0, 0.0625)),
        ("r152_3x_sk1", (152, 3.0, 0.0625)),
        ("r18_0.5x_sk0", (18, 0.5, 0.0)),
        ("r34_0.25x_sk1", (34, 0.25, 0.0625)),
        ("r200_1x_sk0", (200, 1.0, 0.0)),
    ],
)
def test_parse(name: str, expected: tuple[int, float, float]) -> None:
    assert parse_backbone_name(name) == expected


def test_small_images_flag_is_passed_on() -> None:
    model = create_backbone("r18_0.25x_sk0", small_images=True)
    assert model.small_images
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128)


@pytest.mark.parametrize(
    "name",
    [
        "resnet50",
        "r50_1x",
        "r50_1x_sk2",
        "r51_1x_sk0",
        "r50_0x_sk0",
        "R50_1x_sk0",
        "r50_1x_sk0 ",
        "r50_x_sk1",
    ],
)
def test_bad_names_explain_the_expected_form(name: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_backbone_name(name)
    message = str(info.value)
    assert repr(name) in message
    assert "r{depth}_{width}x_sk{0|1}" in message
    assert all(official in message for official in OFFICIAL_BACKBONES)
    with pytest.raises(ValueError):
        create_backbone(name)
