"""Projection head and classifier (SPEC §2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclrv2.models import Classifier, ProjectionHead
from simclrv2.models.heads import ScaleOnlyBatchNorm1d


def test_three_layer_head_returns_every_layer_output() -> None:
    head = ProjectionHead(64, num_layers=3, out_dim=16)
    h = torch.randn(8, 64)
    outputs = head(h)
    assert len(outputs) == 4
    assert outputs[0] is h  # element 0 is the input itself: fine-tuning with k = 0 uses h
    assert [o.shape[1] for o in outputs] == head.out_dims == [64, 64, 64, 16]
    assert all(o.shape[0] == 8 for o in outputs)
    # hidden layers end in ReLU, the last one does not
    assert (outputs[1] >= 0).all() and (outputs[2] >= 0).all()
    assert (outputs[3] < 0).any()


def test_layer_composition_and_parameter_names() -> None:
    head = ProjectionHead(32, num_layers=3, out_dim=8)
    names = {name for name, _ in head.named_parameters()}
    assert names == {
        "layers.0.linear.weight",
        "layers.0.bn.weight",
        "layers.0.bn.bias",
        "layers.1.linear.weight",
        "layers.1.bn.weight",
        "layers.1.bn.bias",
        "layers.2.linear.weight",
        "layers.2.bn.weight",  # no beta on the last layer
    }
    for layer in head.layers:
        assert layer.linear.bias is None
        assert isinstance(layer.bn, nn.BatchNorm1d)
        assert layer.bn.eps == 1e-5 and layer.bn.momentum == 0.1
    last_bn = head.layers[-1].bn
    assert last_bn.bias is None
    assert "layers.2.bn.bias" not in head.state_dict()
    assert "layers.2.bn.running_mean" in head.state_dict()


def test_linear_head_and_no_head() -> None:
    linear = ProjectionHead(64, num_layers=1, out_dim=16)
    h = torch.randn(4, 64)
    outputs = linear(h)
    assert len(outputs) == 2 and linear.out_dims == [64, 16]
    assert outputs[1].shape == (4, 16)
    assert linear.layers[0].bn.bias is None  # "linear" mode: Linear + BN without beta
    assert (outputs[1] < 0).any()  # no ReLU

    none = ProjectionHead(64, num_layers=0)
    outputs = none(h)
    assert len(outputs) == 1 and outputs[0] is h
    assert none.out_dims == [64]
    assert count(none) == 0


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_count() -> None:
    # 2 hidden layers: d*d weights + BN (2d); last: d*128 + BN gamma (128)
    d = 2048
    assert count(ProjectionHead(d)) == 2 * (d * d + 2 * d) + d * 128 + 128


def test_init_normal_std_001_and_bn_identity() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(2048, num_layers=3, out_dim=128)
    weight = head.layers[0].linear.weight.detach()
    assert weight.std().item() == pytest.approx(0.01, rel=0.01)
    assert weight.mean().abs() < 1e-4
    assert weight.abs().max() > 0.04  # a plain normal, not truncated at 2 std
    for layer in head.layers:
        assert torch.all(layer.bn.weight == 1)
        if layer.bn.bias is not None:
            assert torch.all(layer.bn.bias == 0)


def test_scale_only_batchnorm_is_batchnorm_times_gamma() -> None:
    torch.manual_seed(0)
    bn = ScaleOnlyBatchNorm1d(6)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 2.0, 6))
    x = torch.randn(10, 6) * 3 + 1
    plain = nn.BatchNorm1d(6, affine=False)
    torch.testing.assert_close(bn(x), plain(x) * bn.weight)
    torch.testing.assert_close(bn.running_mean, plain.running_mean)
    bn.reset_parameters()
    assert torch.all(bn.weight == 1) and bn.bias is None


def test_sync_batchnorm_conversion_keeps_gamma_and_adds_no_beta() -> None:
    head = ProjectionHead(16, num_layers=2, out_dim=4)
    with torch.no_grad():
        head.layers[-1].bn.weight.fill_(3.0)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    last_bn = converted.layers[-1].bn
    assert isinstance(last_bn, nn.SyncBatchNorm)
    assert last_bn.bias is None
    assert torch.all(last_bn.weight == 3.0)
    assert {n for n, _ in converted.named_parameters()} == {n for n, _ in head.named_parameters()}


def test_gradients_reach_every_head_parameter() -> None:
    head = ProjectionHead(32, num_layers=3, out_dim=8)
    outputs = head(torch.randn(6, 32))
    (outputs[-1] * torch.randn(6, 8)).sum().backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_classifier_is_zero_initialised_linear_with_bias() -> None:
    classifier = Classifier(64, 10)
    assert isinstance(classifier, nn.Linear)
    assert classifier.in_features == 64 and classifier.out_features == 10
    assert classifier.bias is not None
    assert torch.all(classifier.weight == 0) and torch.all(classifier.bias == 0)
    logits = classifier(torch.randn(3, 64))
    assert torch.all(logits == 0)


@pytest.mark.parametrize(("in_dim", "num_layers", "out_dim"), [(0, 3, 128), (64, -1, 128), (64, 3, 0)])
def test_bad_head_arguments_raise(in_dim: int, num_layers: int, out_dim: int) -> None:
    with pytest.raises(ValueError):
        ProjectionHead(in_dim, num_layers=num_layers, out_dim=out_dim)
