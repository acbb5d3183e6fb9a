"""ResNet backbone of SimCLRv2: width multiplier, selective kernels, ResNet-D, small-image stem (SPEC §1).

Post-activation ResNet v1 with the stride on the 3×3 conv of the bottleneck ("v1.5"), following the official
TensorFlow code (google-research/simclr, ``tf2/resnet.py``) layer for layer, so that official checkpoints map
onto it one variable per parameter.

Channel counts for a width multiplier ``w`` are ``max(1, round(c * w))`` for every base count ``c``
(64/128/256/512 per stage, 64 for the stem, 32 for the first two convs of the deep stem); a bottleneck's
output is 4× its (already scaled) inner width. For the integer widths of the paper this is exactly ``c * w``;
fractional widths (0.25, 0.5) give small models for quick experiments.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "ResNetDAvgPool",
    "SelectiveKernelConv",
    "SqueezeExcite",
    "StridedPointwiseConv2d",
    "TFSameMaxPool2d",
    "scaled_channels",
    "tf_variance_scaling_",
]

# Blocks per stage (SPEC §1); True = bottleneck blocks, False = basic blocks.
BLOCKS_PER_STAGE: dict[int, tuple[bool, tuple[int, int, int, int]]] = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}

STAGE_BASE_WIDTHS = (64, 128, 256, 512)
BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention; equals TF's batch_norm_decay = 0.9
SK_MIN_DIM = 32  # the official SK_Conv2D's min_dim

# std of a unit normal truncated at ±2, i.e. the factor TF's VarianceScaling divides by so that the truncated
# samples end up with variance scale / fan_in.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def scaled_channels(base: int, width_multiplier: float) -> int:
    """Channel count for a base count under a width multiplier: ``max(1, round(base * w))`` (SPEC §1).

    The base counts are multiples of 32, so ``base * w`` is never exactly a half for widths with at most
    two decimals, and Python's round-half-to-even never comes into play for them.
    """
    return max(1, round(base * width_multiplier))


@torch.no_grad()
def tf_variance_scaling_(weight: torch.Tensor) -> torch.Tensor:
    """In-place TF ``VarianceScaling()`` init: truncated normal, fan-in, scale 1 (SPEC §1; not He init).

    TF draws from N(0, s²) with s = sqrt(1 / fan_in) / 0.8796…, re-drawing anything beyond ±2s, so that the
    samples have standard deviation sqrt(1 / fan_in).
    """
    fan_in = weight[0].numel()  # in_channels × kh × kw for a conv, in_features for a linear layer
    std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    # TF's conv2d_fixed_padding pads (k-1)//2 before and the rest after for stride > 1 and uses "SAME" for
    # stride 1; for the odd kernels used here both equal PyTorch's symmetric padding k // 2.
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
    )
    tf_variance_scaling_(conv.weight)
    return conv


# oneDNN workaround (torch 2.14.1, which bundles oneDNN v3.12.0): on CPUs whose best ISA is AVX2 (no
# AVX-512, or ONEDNN_MAX_CPU_ISA=AVX2), the weight gradient of a 1x1 convolution with stride > 1 and 2-7
# input channels in channels-last layout (oneDNN's jit_avx2_1x1_convolution_bwd_weights_t, "jit_1x1:avx2"
# in ONEDNN_VERBOSE) corrupts memory: a segmentation fault, an abort, a bus error or a hang, or silently
# wrong gradients (relative error 0.1-1). NCHW, 3x3 kernels, stride 1 and >= 8 input channels are sound there
# (measured for every conv shape our models build; tests/models/test_avx2_kernels.py). Remove
# StridedPointwiseConv2d's detour once a torch upgrade makes that test pass without it.
ONEDNN_AVX2_1X1_MIN_CHANNELS = 8


class StridedPointwiseConv2d(nn.Conv2d):
    """A 1×1 convolution with stride s that, on the CPU with fewer than 8 input channels, takes every s-th row
    and column first and then convolves with stride 1: the same function and the same parameters (so the
    same checkpoints), without reaching the broken oneDNN kernel described above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        if (sh, sw) != (1, 1) and self.in_channels < ONEDNN_AVX2_1X1_MIN_CHANNELS and x.device.type == "cpu":
            return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)
        return super().forward(x)


def _bn(channels: int, zero_init: bool = False) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if zero_init:
        # The last BN of every residual block starts at γ = 0 so each block starts as the identity (SPEC §1).
        nn.init.zeros_(bn.weight)
    return bn


class ResNetDAvgPool(nn.Module):
    """2×2 average pool in front of a ResNet-D projection shortcut, with TF's padding (SPEC §1).

    Stride 1: TF "SAME" adds one cell at the bottom/right and leaves it out of the average. PyTorch pads
    symmetrically, so pool with padding 1 (padded cells excluded) and drop the first row and column.
    Stride 2: TF pads one zero row/column at the bottom/right, counted in the average, then pools "VALID";
    the pad only changes anything for odd sizes (e.g. 7×7 → 4×4 in the small-image net on 28×28 inputs).
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetDAvgPool supports stride 1 or 2, got {stride}")
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            pooled = F.avg_pool2d(x, kernel_size=2, stride=1, padding=1, count_include_pad=False)
            return pooled[:, :, 1:, 1:]
        pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class TFSameMaxPool2d(nn.Module):
    """Max-pool with TensorFlow's "SAME" padding: the stem's 3×3 stride-2 pool of the official models.

    TF pads ``max((ceil(n / s) - 1) * s + k - n, 0)`` cells per spatial side, the smaller half first, so for
    even sizes (112 at 224 px) the one padded cell is at the bottom/right; PyTorch's ``padding=1`` pads both
    sides and shifts every window by a pixel (SPEC §1). Padding is with -inf, so padded cells never win.
    Only needed to compute what an official checkpoint computes; no parameters.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for n in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
            total = max((-(-n // self.stride) - 1) * self.stride + self.kernel_size - n, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding=TF SAME"


def _projection_shortcut(in_channels: int, out_channels: int, stride: int, resnet_d: bool) -> nn.Sequential:
    # Shortcut BNs are not zero-initialised (SPEC §1).
    if resnet_d:
        # ResNet-D (https://arxiv.org/abs/1812.01187): average-pool first, then a stride-1 1×1 conv, so the
        # shortcut sees every input pixel instead of one in four.
        return nn.Sequential(
            OrderedDict(
                pool=ResNetDAvgPool(stride),
                conv=_conv(in_channels, out_channels, 1),
                bn=_bn(out_channels),
            )
        )
    conv = StridedPointwiseConv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    tf_variance_scaling_(conv.weight)
    return nn.Sequential(OrderedDict(conv=conv, bn=_bn(out_channels)))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation gate (SPEC §1; optional, unused by the released models).

    Spatial mean → 1×1 conv with bias to ``max(1, int(width * se_ratio))`` → ReLU → 1×1 conv with bias back to
    ``channels`` → sigmoid, multiplied onto the input. ``width`` is the block's inner width (the official code
    passes ``filters``), ``channels`` its output width.
    """

    def __init__(self, channels: int, width: int, se_ratio: float) -> None:
        super().__init__()
        reduced = max(1, int(width * se_ratio))
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        for conv in (self.reduce, self.expand):
            tf_variance_scaling_(conv.weight)
            assert conv.bias is not None
            nn.init.zeros_(conv.bias)  # Keras' default bias init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = self.expand(F.relu(self.reduce(gate)))
        return x * torch.sigmoid(gate)


class SelectiveKernelConv(nn.Module):
    """The official SimCLRv2 selective-kernel unit, replacing the bottleneck's 3×3 conv + BN + ReLU (SPEC §1).

    One 3×3 conv (stride s) to 2F channels, BN, ReLU; the two halves are two plain 3×3 streams. Their sum is
    averaged over space, squeezed by a 1×1 conv to ``max(int(F * sk_ratio), 32)`` (BN, ReLU) and expanded by a
    1×1 conv to 2F logits; a softmax over the two streams per channel gives the mixing weights. This is not
    timm's SelectiveKernel (3×3 + dilated paths); official weights only fit this one.

    The softmax is the submodule ``softmax`` so that tests and analyses can read the attention with a forward
    hook (output shape (N, 2, F, 1, 1)) without the forward pass keeping anything.
    """

    def __init__(self, in_channels: int, width: int, stride: int, sk_ratio: float) -> None:
        super().__init__()
        self.width = width
        mid = max(int(width * sk_ratio), SK_MIN_DIM)
        self.conv = _conv(in_channels, 2 * width, 3, stride)
        self.bn = _bn(2 * width)
        self.reduce = _conv(width, mid, 1)
        self.bn_reduce = _bn(mid)
        self.expand = _conv(mid, 2 * width, 1)
        self.relu = nn.ReLU(inplace=True)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))  # (N, 2F, H, W): channels [0, F) are stream 1, [F, 2F) stream 2
        n = x.shape[0]
        # mean(stream1 + stream2) == mean(stream1) + mean(stream2): pool the 2F channels first, then add the
        # halves, which costs (N, 2F) instead of a full-size (N, F, H, W) sum.
        descriptor = x.mean(dim=(2, 3)).view(n, 2, self.width).sum(dim=1)
        descriptor = descriptor.view(n, self.width, 1, 1)
        logits = self.expand(self.relu(self.bn_reduce(self.reduce(descriptor))))
        attention = self.softmax(logits.view(n, 2, self.width, 1, 1))
        # unflatten is a view in both memory formats (channels_last included), so no copy is made here.
        streams = x.unflatten(1, (2, self.width))
        return (streams * attention).sum(dim=1)


class BasicBlock(nn.Module):
    """Two 3×3 convs (ResNet-18/34). Follows the official ``ResidualBlock`` (SPEC §1).

    The official code never puts a selective kernel in a basic block: with ``sk_ratio > 0`` a basic-block net
    only gets ResNet-D (deep stem, average-pool shortcuts), which is what ``resnet_d`` switches on here.
    (The TF1 ``residual_block`` also average-pools the *main* path in that case, a bug that the TF2 code
    fixed; we follow TF2.)
    """

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        projection: bool,
        resnet_d: bool = False,
        se_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        self.out_channels = width
        self.shortcut: nn.Module = (
            _projection_shortcut(in_channels, width, stride, resnet_d) if projection else nn.Identity()
        )
        self.conv1 = _conv(in_channels, width, 3, stride)
        self.bn1 = _bn(width)
        self.conv2 = _conv(width, width, 3)
        self.bn2 = _bn(width, zero_init=True)
        self.se = SqueezeExcite(width, width, se_ratio) if se_ratio > 0 else None
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose γ starts at 0 (SPEC §1)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)  # after the zero-init BN, before the residual add (SPEC §1)
        out += shortcut
        return self.relu(out)


class BottleneckBlock(nn.Module):
    """1×1 → 3×3 (stride here: "v1.5") → 1×1 to 4F, or 1×1 → SK → 1×1 when ``sk_ratio > 0`` (SPEC §1)."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int,
        projection: bool,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        out_channels = self.expansion * width
        self.out_channels = out_channels
        # Official order of creation (matters for TF1 variable names, SPEC §8): shortcut, 1×1, 3×3 or SK, 1×1.
        self.shortcut: nn.Module = (
            _projection_shortcut(in_channels, out_channels, stride, resnet_d=sk_ratio > 0)
            if projection
            else nn.Identity()
        )
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = _bn(width)
        # Either a plain 3×3 (conv2/bn2) or the SK unit, never both.
        self.conv2: nn.Conv2d | None = None
        self.bn2: nn.BatchNorm2d | None = None
        self.sk: SelectiveKernelConv | None = None
        if sk_ratio > 0:
            self.sk = SelectiveKernelConv(width, width, stride, sk_ratio)
        else:
            self.conv2 = _conv(width, width, 3, stride)
            self.bn2 = _bn(width)
        self.conv3 = _conv(width, out_channels, 1)
        self.bn3 = _bn(out_channels, zero_init=True)
        self.se = SqueezeExcite(out_channels, width, se_ratio) if se_ratio > 0 else None
        self.relu = nn.ReLU(inplace=True)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN whose γ starts at 0 (SPEC §1)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        if self.sk is not None:
            out = self.sk(out)  # already includes BN + ReLU
        else:
            assert self.conv2 is not None and self.bn2 is not None
            out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)  # after the zero-init BN, before the residual add (SPEC §1)
        out += shortcut
        return self.relu(out)


def _stem(
    in_channels: int, width_multiplier: float, deep: bool, small_images: bool, tf_same_pool: bool = False
) -> nn.Sequential:
    stem_channels = scaled_channels(64, width_multiplier)
    if small_images:
        # CIFAR-style stem: keeps full resolution, so 32×32 (and 28×28) inputs reach stage 4 at 4×4.
        return nn.Sequential(
            OrderedDict(
                conv1=_conv(in_channels, stem_channels, 3),
                bn1=_bn(stem_channels),
                relu1=nn.ReLU(inplace=True),
            )
        )
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if deep:
        # ResNet-D deep stem: three 3×3 convs (32w, 32w, 64w) instead of one 7×7.
        half = scaled_channels(32, width_multiplier)
        layers["conv1"] = _conv(in_channels, half, 3, stride=2)
        layers["bn1"] = _bn(half)
        layers["relu1"] = nn.ReLU(inplace=True)
        layers["conv2"] = _conv(half, half, 3)
        layers["bn2"] = _bn(half)
        layers["relu2"] = nn.ReLU(inplace=True)
        layers["conv3"] = _conv(half, stem_channels, 3)
        layers["bn3"] = _bn(stem_channels)
        layers["relu3"] = nn.ReLU(inplace=True)
    else:
        layers["conv1"] = _conv(in_channels, stem_channels, 7, stride=2)
        layers["bn1"] = _bn(stem_channels)
        layers["relu1"] = nn.ReLU(inplace=True)
    # TF "SAME" max-pooling pads only the bottom/right, PyTorch's padding=1 pads both sides, which shifts the
    # pooling windows by one pixel. It makes no difference for training from scratch; a converter for official
    # weights uses TF's padding instead (``tf_same_pool``, set by ``simclrv2 convert``; SPEC §1).
    layers["pool"] = TFSameMaxPool2d(3, 2) if tf_same_pool else nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(layers)


class ResNet(nn.Module):
    """SimCLRv2 ResNet backbone: returns the globally average-pooled feature h, shape (N, num_features).

    Args:
        depth: 18 or 34 (basic blocks), 50, 101, 152 or 200 (bottleneck blocks).
        width_multiplier: scales every channel count, stem included (SPEC §1); any positive value, e.g. 0.25.
        sk_ratio: > 0 puts the selective kernel in every bottleneck (released models: 0.0625) and switches on
            ResNet-D (deep stem, average-pool shortcuts) for both block types.
        se_ratio: > 0 adds a squeeze-excitation gate to every block.
        small_images: the 3×3 stride-1 stem without max-pool for ≤ 32 px images; overrides the deep stem.
        in_channels: input image channels.
        grad_checkpoint: activation checkpointing per residual block while training (see
            :meth:`forward`); also settable later as the attribute of the same name.
        tf_same_pool: the stem max-pool pads like TensorFlow's "SAME" (:class:`TFSameMaxPool2d`), as the
            official checkpoints were trained; converted models are rebuilt with it. No parameters change.

    Layout: ``stem`` (conv/BN/ReLU[/pool]), ``stages`` (4 sequential stages of blocks). As in the official
    code the first block of *every* stage has a projection shortcut, including stage 1 of ResNet-18/34 where
    the channel count does not change (torchvision uses an identity there; the official code does not).
    """

    def __init__(
        self,
        depth: int,
        width_multiplier: float,
        sk_ratio: float = 0.0,
        se_ratio: float = 0.0,
        small_images: bool = False,
        in_channels: int = 3,
        grad_checkpoint: bool = False,
        tf_same_pool: bool = False,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet depth {depth} is not supported; choose one of {sorted(BLOCKS_PER_STAGE)}"
            )
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier must be positive, got {width_multiplier}")
        if sk_ratio < 0 or se_ratio < 0:
            raise ValueError(f"sk_ratio and se_ratio must be >= 0, got {sk_ratio} and {se_ratio}")
        self.depth = depth
        self.width_multiplier = width_multiplier
        self.sk_ratio = sk_ratio
        self.se_ratio = se_ratio
        self.small_images = small_images
        self.grad_checkpoint = grad_checkpoint
        self.tf_same_pool = tf_same_pool

        bottleneck, blocks_per_stage = BLOCKS_PER_STAGE[depth]
        resnet_d = sk_ratio > 0
        self.stem = _stem(in_channels, width_multiplier, resnet_d, small_images, tf_same_pool)

        channels = scaled_channels(64, width_multiplier)
        stages: list[nn.Sequential] = []
        for stage_index, (base, num_blocks) in enumerate(
            zip(STAGE_BASE_WIDTHS, blocks_per_stage, strict=True)
        ):
            width = scaled_channels(base, width_multiplier)
            blocks: list[nn.Module] = []
            for block_index in range(num_blocks):
                first = block_index == 0
                stride = 2 if first and stage_index > 0 else 1
                block: BasicBlock | BottleneckBlock
                if bottleneck:
                    block = BottleneckBlock(channels, width, stride, first, sk_ratio, se_ratio)
                else:
                    block = BasicBlock(channels, width, stride, first, resnet_d, se_ratio)
                blocks.append(block)
                channels = block.out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.num_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """h = global average of the last stage's output.

        With ``grad_checkpoint`` (and only while training with gradients on) each residual block keeps just
        its input for the backward pass and is re-run there (``torch.utils.checkpoint``, non-reentrant):
        activation memory drops to about one block's worth plus the block inputs, for one more forward
        pass of the blocks. The re-run does not update the BatchNorm running statistics a second time.
        """
        x = self.stem(x)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            for stage in self.stages:
                for block in stage.children():
                    x = checkpoint(block, x, use_reentrant=False, context_fn=_recompute_keeps_bn_stats(block))
        else:
            x = self.stages(x)
        return x.mean(dim=(2, 3))


class _KeepBatchNormStats(contextlib.AbstractContextManager):
    """Restores the running statistics of the BatchNorms in a module on exit: the checkpoint's re-run of
    a block's forward computes the same batch statistics again and must not apply the momentum twice."""

    def __init__(self, module: nn.Module) -> None:
        self.buffers = [
            buf
            for m in module.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buf is not None
        ]
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> _KeepBatchNormStats:
        self.saved = [buf.clone() for buf in self.buffers]
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for buf, saved in zip(self.buffers, self.saved, strict=True):
                buf.copy_(saved)
        self.saved = []


def _recompute_keeps_bn_stats(block: nn.Module) -> Any:
    """``context_fn`` for :func:`torch.utils.checkpoint.checkpoint`: nothing around the first forward,
    :class:`_KeepBatchNormStats` around the recomputation."""
    return lambda: (contextlib.nullcontext(), _KeepBatchNormStats(block))
