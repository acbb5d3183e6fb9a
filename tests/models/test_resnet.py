"""ResNet backbone (SPEC §1): sizes, initialisation, SK, ResNet-D pooling, stems, mixed precision."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from simclrv2.models import ResNet
from simclrv2.models.resnet import (
    BasicBlock,
    BottleneckBlock,
    ResNetDAvgPool,
    SelectiveKernelConv,
    tf_variance_scaling_,
)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def blocks_of(model: ResNet) -> list[BasicBlock | BottleneckBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock | BottleneckBlock)]


@pytest.mark.parametrize(
    ("depth", "width", "sk_ratio", "se_ratio", "small_images", "num_features"),
    [
        (18, 1.0, 0.0, 0.0, True, 512),
        (18, 0.5, 0.0, 0.0, False, 256),
        (18, 1.0, 0.0625, 0.0, False, 512),  # basic blocks + ResNet-D, no SK
        (34, 1.0, 0.0, 0.0, False, 512),
        (50, 1.0, 0.0, 0.0, False, 2048),
        (50, 1.0, 0.0625, 0.0, False, 2048),
        (50, 0.25, 0.0, 0.0, True, 512),
        (50, 0.5, 0.0625, 0.25, False, 1024),
        (101, 1.0, 0.0, 0.0, False, 2048),
        (152, 3.0, 0.0625, 0.0, False, 6144),
        (200, 2.0, 0.0, 0.0, False, 4096),
    ],
)
def test_param_count_and_feature_dim_match_hand_count(
    expected_resnet_params: Callable[..., int],
    depth: int,
    width: float,
    sk_ratio: float,
    se_ratio: float,
    small_images: bool,
    num_features: int,
) -> None:
    # Built on the meta device: shapes only, no memory and no init cost, so R152 3x is as cheap as R18.
    with torch.device("meta"):
        model = ResNet(depth, width, sk_ratio=sk_ratio, se_ratio=se_ratio, small_images=small_images)
    assert model.num_features == num_features
    assert count_params(model) == expected_resnet_params(depth, width, sk_ratio, se_ratio, small_images)


def test_r50_matches_torchvision_resnet50_without_fc() -> None:
    # torchvision resnet50: 25,557,032 parameters, of which the fc layer holds 2048*1000 + 1000 = 2,049,000.
    with torch.device("meta"):
        ours = ResNet(50, 1.0)
        reference = torchvision.models.resnet50()
    assert count_params(ours) == 23_508_032
    assert count_params(ours) == count_params(reference) - count_params(reference.fc)


def test_r18_has_the_official_stage1_projection() -> None:
    # The official code projects the shortcut of the first block of every stage, so ResNet-18 has one extra
    # 1x1 conv (64*64) + BN (2*64) compared with torchvision's identity there.
    with torch.device("meta"):
        ours = ResNet(18, 1.0)
        reference = torchvision.models.resnet18()
    torchvision_without_fc = count_params(reference) - count_params(reference.fc)
    assert torchvision_without_fc == 11_176_512
    assert count_params(ours) == torchvision_without_fc + 64 * 64 + 2 * 64


@pytest.mark.parametrize(
    ("depth", "width", "sk_ratio"), [(18, 1.0, 0.0), (50, 0.25, 0.0625), (34, 0.25, 0.0625)]
)
def test_forward_gives_pooled_features(depth: int, width: float, sk_ratio: float) -> None:
    model = ResNet(depth, width, sk_ratio=sk_ratio)
    h = model(torch.randn(2, 3, 64, 64))
    assert h.shape == (2, model.num_features)
    assert torch.isfinite(h).all()


def test_structure_no_conv_bias_bn_settings_and_block_types() -> None:
    model = ResNet(50, 0.25, sk_ratio=0.0625)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            assert module.bias is None
        if isinstance(module, nn.BatchNorm2d):
            assert module.eps == 1e-5
            assert module.momentum == 0.1
    blocks = blocks_of(model)
    assert len(blocks) == 3 + 4 + 6 + 3
    assert all(isinstance(b, BottleneckBlock) and b.sk is not None and b.conv2 is None for b in blocks)
    # v1.5: the stride sits on the 3x3 (inside SK here), not on the first 1x1.
    first_of_stage2 = model.stages[1][0]
    assert first_of_stage2.conv1.stride == (1, 1)
    assert first_of_stage2.sk.conv.stride == (2, 2)


def test_basic_blocks_never_get_selective_kernels_but_get_resnet_d() -> None:
    model = ResNet(18, 0.25, sk_ratio=0.0625)
    assert not any(isinstance(m, SelectiveKernelConv) for m in model.modules())
    assert all(isinstance(b, BasicBlock) for b in blocks_of(model))
    assert sum(isinstance(m, ResNetDAvgPool) for m in model.modules()) == 4  # one per stage
    assert [name for name, _ in model.stem.named_children()][:3] == ["conv1", "bn1", "relu1"]
    assert model.stem.conv1.kernel_size == (3, 3)  # deep stem


def test_last_bn_of_every_block_starts_at_zero_gamma_and_no_other() -> None:
    for model in (ResNet(50, 0.25, sk_ratio=0.0625, se_ratio=0.25), ResNet(18, 0.25, sk_ratio=0.0625)):
        last_bns = set()
        for block in blocks_of(model):
            assert torch.all(block.last_bn.weight == 0)
            last_bns.add(block.last_bn)
        others = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m not in last_bns]
        # shortcut, SK, stem and inner BNs
        assert len(others) > len(last_bns)
        for bn in others:
            assert torch.all(bn.weight == 1)
            assert torch.all(bn.bias == 0)


def test_tf_variance_scaling_std_and_truncation() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(512, 512, 3, bias=False)  # 2.4M weights, fan_in 4608
    tf_variance_scaling_(conv.weight)
    fan_in = 512 * 9
    target_std = math.sqrt(1.0 / fan_in)  # what TF's VarianceScaling(scale=1, fan_in) aims for
    raw_std = target_std / 0.87962566103423978  # std of the normal before truncation
    w = conv.weight.detach()
    assert w.mean().abs() < 0.01 * target_std
    assert w.std().item() == pytest.approx(target_std, rel=0.01)
    assert w.abs().max() <= 2 * raw_std + 1e-9
    assert w.abs().max() > 1.95 * raw_std  # truncated at 2 std, not narrower


def test_resnet_convs_use_tf_init() -> None:
    torch.manual_seed(0)
    model = ResNet(50, 1.0)
    conv = model.stages[3][1].conv2  # 512 -> 512, 3x3
    assert conv.weight.std().item() == pytest.approx(math.sqrt(1.0 / (512 * 9)), rel=0.02)
    # He init (what torchvision does) would be sqrt(2 / fan_out) = 0.0208; make sure we are not there.
    assert conv.weight.std().item() < 0.018


def _reference_selective_kernel(sk: SelectiveKernelConv, x: torch.Tensor) -> torch.Tensor:
    """The official TF algorithm, written step by step with the module's own weights."""
    x = F.relu(sk.bn(sk.conv(x)))
    streams = torch.stack(torch.split(x, x.shape[1] // 2, dim=1))  # (2, N, F, H, W)
    global_features = streams.sum(dim=0).mean(dim=(2, 3), keepdim=True)
    global_features = F.relu(sk.bn_reduce(sk.reduce(global_features)))
    mixing = sk.expand(global_features)
    mixing = torch.stack(torch.split(mixing, mixing.shape[1] // 2, dim=1))  # (2, N, F, 1, 1)
    mixing = torch.softmax(mixing, dim=0)
    return (streams * mixing).sum(dim=0)


def test_selective_kernel_matches_reference_and_attention_sums_to_one() -> None:
    torch.manual_seed(0)
    sk = SelectiveKernelConv(in_channels=16, width=16, stride=2, sk_ratio=0.0625)
    assert sk.reduce.out_channels == 32  # max(int(16 * 0.0625), 32)
    for bn in (sk.bn, sk.bn_reduce):  # non-trivial BN affine so the reference check means something
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -0.5, 0.5)
    captured: list[torch.Tensor] = []
    handle = sk.softmax.register_forward_hook(lambda _m, _i, out: captured.append(out))
    x = torch.randn(4, 16, 9, 9)
    out = sk(x)
    handle.remove()
    torch.testing.assert_close(out, _reference_selective_kernel(sk, x), rtol=1e-5, atol=1e-5)
    assert out.shape == (4, 16, 5, 5)
    (attention,) = captured
    assert attention.shape == (4, 2, 16, 1, 1)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(4, 16, 1, 1))
    assert not torch.allclose(attention[:, 0], attention[:, 1])  # a real choice between the streams


def test_selective_kernel_attention_inside_the_network() -> None:
    model = ResNet(50, 0.25, sk_ratio=0.0625, small_images=True)
    captured: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, SelectiveKernelConv):
            module.softmax.register_forward_hook(lambda _m, _i, out: captured.append(out))
    model(torch.randn(2, 3, 16, 16))
    assert len(captured) == 16
    for attention in captured:
        torch.testing.assert_close(attention.sum(dim=1), torch.ones_like(attention[:, 0]))


def _tf_avg_pool_reference(x: np.ndarray, stride: int) -> np.ndarray:
    """TF pooling for the ResNet-D shortcut: stride 1 'SAME' (pad bottom/right, excluded from the mean);
    stride 2: explicit zero pad of 1 at the bottom/right (counted), then 'VALID'."""
    if stride == 2:
        x = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))
        h_out, w_out = (x.shape[2] - 2) // 2 + 1, (x.shape[3] - 2) // 2 + 1
    else:
        h_out, w_out = x.shape[2], x.shape[3]
    out = np.zeros((*x.shape[:2], h_out, w_out))
    for i in range(h_out):
        for j in range(w_out):
            window = x[:, :, i * stride : i * stride + 2, j * stride : j * stride + 2]
            out[:, :, i, j] = window.mean(axis=(2, 3))  # cells past the edge are simply absent
    return out


@pytest.mark.parametrize(("stride", "size"), [(1, 5), (1, 6), (2, 7), (2, 8)])
def test_resnet_d_avg_pool_matches_tf_padding(stride: int, size: int) -> None:
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    expected = torch.from_numpy(_tf_avg_pool_reference(x.numpy(), stride))
    torch.testing.assert_close(ResNetDAvgPool(stride)(x), expected)
    torch.testing.assert_close(ResNetDAvgPool(stride)(x.to(memory_format=torch.channels_last)), expected)


@pytest.mark.parametrize(("depth", "sk_ratio"), [(18, 0.0), (18, 0.0625), (50, 0.0), (50, 0.0625)])
@pytest.mark.parametrize("size", [32, 28])
def test_small_image_stem_reaches_stage4_at_4x4(depth: int, sk_ratio: float, size: int) -> None:
    model = ResNet(depth, 0.25, sk_ratio=sk_ratio, small_images=True)
    # the small-image stem overrides the deep stem: one stride-1 3x3 conv, no max-pool
    assert [name for name, _ in model.stem.named_children()] == ["conv1", "bn1", "relu1"]
    assert model.stem.conv1.stride == (1, 1) and model.stem.conv1.kernel_size == (3, 3)
    shapes: list[torch.Size] = []
    model.stages[-1].register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    model(torch.randn(2, 3, size, size))
    assert shapes == [torch.Size([2, model.num_features, 4, 4])]


def test_standard_stem_downsamples_by_32() -> None:
    model = ResNet(18, 0.25)
    shapes: list[torch.Size] = []
    model.stages[-1].register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    model(torch.randn(2, 3, 64, 64))
    assert shapes == [torch.Size([2, 128, 2, 2])]
    assert model.stem.conv1.kernel_size == (7, 7)


def test_in_channels_for_grayscale_inputs() -> None:
    model = ResNet(18, 0.25, in_channels=1, small_images=True)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 128)


@pytest.mark.parametrize("sk_ratio", [0.0, 0.0625])
def test_channels_last_gives_the_same_features(sk_ratio: float) -> None:
    torch.manual_seed(0)
    model = ResNet(50, 0.25, sk_ratio=sk_ratio, se_ratio=0.25, small_images=True)
    for bn in model.modules():  # undo the zero-init so the residual branches contribute
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.ones_(bn.weight)
    x = torch.randn(4, 3, 28, 28)
    expected = model(x)
    model_cl = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        model_cl(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4
    )


def test_bf16_autocast_with_channels_last_runs_forward_and_backward() -> None:
    model = ResNet(50, 0.25, sk_ratio=0.0625, se_ratio=0.25, small_images=True)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model(x)
    assert h.shape == (4, model.num_features)
    assert h.dtype == torch.bfloat16
    h.float().square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 42, "width_multiplier": 1.0},
        {"depth": 50, "width_multiplier": 0.0},
        {"depth": 50, "width_multiplier": -1.0},
        {"depth": 50, "width_multiplier": 1.0, "sk_ratio": -0.1},
    ],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ResNet(**kwargs)


@pytest.mark.parametrize("in_channels", [1, 4, 7, 8, 16])
@pytest.mark.parametrize("size", [7, 8, 15])
def test_strided_pointwise_conv_equals_the_strided_convolution(in_channels: int, size: int) -> None:
    """The oneDNN detour (subsample, then stride 1) is the same function with the same parameters as a 1x1
    stride-2 convolution, checked in fp64 NCHW (ATen's own kernel, not the broken one), odd sizes included."""
    from simclrv2.models.resnet import StridedPointwiseConv2d

    torch.manual_seed(0)
    ours = StridedPointwiseConv2d(in_channels, 8, 1, stride=2, bias=False).double()
    plain = nn.Conv2d(in_channels, 8, 1, stride=2, bias=False).double()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(3, in_channels, size, size, dtype=torch.float64, requires_grad=True)
    y = ours(x)
    y_plain = plain(x)
    torch.testing.assert_close(y, y_plain, rtol=0, atol=1e-12)
    gy = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, ours.weight), gy)
    gx_plain, gw_plain = torch.autograd.grad(y_plain, (x, plain.weight), gy)
    torch.testing.assert_close(gx, gx_plain, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, gw_plain, rtol=1e-12, atol=1e-12)


def test_projection_shortcut_keeps_its_checkpoint_keys() -> None:
    """The detour changes no parameter name or shape: checkpoints of earlier versions load as before."""
    from simclrv2.models.resnet import StridedPointwiseConv2d

    model = ResNet(18, 0.0625)
    shortcut = model.stages[1][0].shortcut
    assert isinstance(shortcut.conv, StridedPointwiseConv2d) and shortcut.conv.stride == (2, 2)
    assert "stages.1.0.shortcut.conv.weight" in model.state_dict()
    assert model.state_dict()["stages.1.0.shortcut.conv.weight"].shape == (8, 4, 1, 1)


def _tf_same_max_pool_reference(x: np.ndarray, k: int = 3, s: int = 2) -> np.ndarray:
    """TF "SAME" max-pooling by its definition: out = ceil(n / s); pad_total = max((out - 1) * s + k - n, 0),
    the smaller half before; padded cells never win."""
    n, c, h, w = x.shape
    oh, ow = -(-h // s), -(-w // s)
    ph, pw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
    padded = np.full((n, c, h + ph, w + pw), -np.inf, dtype=x.dtype)
    padded[:, :, ph // 2 : ph // 2 + h, pw // 2 : pw // 2 + w] = x
    out = np.empty((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = padded[:, :, i * s : i * s + k, j * s : j * s + k].max(axis=(2, 3))
    return out


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (112, 113)])
def test_tf_same_max_pool_matches_the_definition_and_differs_from_pytorch_padding(size):
    from simclrv2.models.resnet import TFSameMaxPool2d

    x = torch.randn(2, 3, *size)
    ours = TFSameMaxPool2d(3, 2)(x)
    np.testing.assert_array_equal(ours.numpy(), _tf_same_max_pool_reference(x.numpy()))
    if size[0] % 2 == 0:  # even sizes: TF pads only the bottom/right, PyTorch both sides
        assert not torch.equal(ours, torch.nn.functional.max_pool2d(x, 3, 2, padding=1))
    assert isinstance(ResNet(50, 0.125, tf_same_pool=True).stem.pool, TFSameMaxPool2d)
