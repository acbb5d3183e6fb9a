"""Backbone + head as one model (SPEC §1-§3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclrv2.models import ProjectionHead, ResNet, SimCLRModel


def small_model(sk_ratio: float = 0.0625, se_ratio: float = 0.25) -> SimCLRModel:
    backbone = ResNet(50, 0.25, sk_ratio=sk_ratio, se_ratio=se_ratio, small_images=True)
    return SimCLRModel(backbone, ProjectionHead(backbone.num_features, num_layers=3, out_dim=32))


def test_forward_returns_every_head_output_for_both_views() -> None:
    model = small_model()
    view_a, view_b = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    outputs = model(torch.cat([view_a, view_b]))  # 2N images in one pass, as in the official code
    assert [tuple(o.shape) for o in outputs] == [(6, 512), (6, 512), (6, 512), (6, 32)]
    model.eval()
    torch.testing.assert_close(model.features(view_a), model.backbone(view_a))
    torch.testing.assert_close(model(view_a)[0], model.features(view_a))


@pytest.mark.parametrize(("depth", "sk_ratio"), [(50, 0.0625), (18, 0.0625), (50, 0.0)])
def test_every_parameter_gets_a_gradient(depth: int, sk_ratio: float) -> None:
    torch.manual_seed(0)
    backbone = ResNet(depth, 0.25, sk_ratio=sk_ratio, se_ratio=0.25, small_images=True)
    model = SimCLRModel(backbone, ProjectionHead(backbone.num_features, out_dim=16))
    # With the zero-init γ the residual branches get exactly zero gradient at step 0; open them so that a
    # disconnected parameter shows up as a zero gradient rather than hiding among legitimate zeros.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    z = model(torch.randn(4, 3, 16, 16))[-1]
    (z * torch.randn_like(z)).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_default_init_gradients_exist() -> None:
    model = small_model()
    z = model(torch.randn(4, 3, 16, 16))[-1]
    (z * torch.randn_like(z)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bf16_autocast_channels_last() -> None:
    model = small_model().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(x)
    assert [tuple(o.shape) for o in outputs] == [(4, 512), (4, 512), (4, 512), (4, 32)]
    assert all(torch.isfinite(o).all() for o in outputs)
    outputs[-1].float().square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_head_dimension_mismatch_is_refused() -> None:
    backbone = ResNet(18, 0.25)
    with pytest.raises(ValueError, match="ProjectionHead"):
        SimCLRModel(backbone, ProjectionHead(512))
