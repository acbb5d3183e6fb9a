"""Activation checkpointing of the ResNet (``grad_checkpoint``): the same numbers, less saved memory."""

import copy

import pytest
import torch
from torch import nn

from simclrv2.models import create_backbone


def _pair(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = create_backbone(name, small_images=True)
    for m in plain.modules():  # non-zero last-BN gammas, so that every block's residual branch matters
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    checkpointed = copy.deepcopy(plain)
    checkpointed.grad_checkpoint = True
    return plain, checkpointed


@pytest.mark.parametrize("name", ["r18_0.25x_sk0", "r50_0.25x_sk1"])  # basic blocks; bottleneck + SK
def test_checkpointing_gives_the_same_outputs_gradients_and_batchnorm_statistics(name: str) -> None:
    plain, checkpointed = _pair(name)
    x = torch.rand(4, 3, 8, 8)
    outputs = []
    for model in (plain, checkpointed):
        y = model(x)
        y.square().sum().backward()
        outputs.append(y)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    # The recomputation must not update the running statistics a second time (momentum applied twice).
    for a, b in zip(plain.buffers(), checkpointed.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return total


def test_checkpointing_keeps_far_fewer_activations_and_only_while_training() -> None:
    plain, checkpointed = _pair("r18_0.25x_sk0")
    x = torch.rand(4, 3, 16, 16)
    full, kept = _saved_bytes(plain, x), _saved_bytes(checkpointed, x)
    assert kept < full / 3, (kept, full)
    checkpointed.eval()  # evaluation never checkpoints (nothing to save anyway under no_grad)
    assert _saved_bytes(checkpointed, x) == _saved_bytes(plain.eval(), x)
