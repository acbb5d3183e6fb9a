"""The official SimCLRv2 variable names and what they are in our models (SPEC §1, §2, §8).

For an architecture this module lists every tensor of our backbone, projection head and classifier in the
order the official code creates its variables, with

- the TF1 name (``resnet.py`` + ``model_util.py``): ``base_model/conv2d_N/kernel``,
  ``base_model/batch_normalization_N/{gamma,beta,moving_mean,moving_variance}`` with ``_N`` counting, per
  layer type, in graph-creation order; ``head_contrastive/nl_J/...``; ``head_supervised/linear_layer/...``;
- the TF2 object path (``tf2/resnet.py`` + ``tf2/model.py``, relative to the Keras ``Model``):
  ``resnet_model/block_groups/G/layers/B/conv_relu_dropblock_layers/I/conv2d/kernel``, ...;
- our key, and how the value is laid out (conv kernels HWIO -> OIHW, dense kernels transposed).

The list is generated from our own modules, built on the ``meta`` device (no memory, no initialisation even
for R152 3x), so that a structural change on our side shows up as a mismatch in the tests, which compare
it with the names recorded from the official code for all 13 released architectures.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from simclrv2.models.meta import meta_modules
from simclrv2.models.registry import parse_backbone_name
from simclrv2.models.resnet import BLOCKS_PER_STAGE, BasicBlock, BottleneckBlock, ResNet, scaled_channels

__all__ = [
    "TF2_SUFFIX",
    "ArchSpec",
    "Slot",
    "backbone_name",
    "expected_slots",
    "feature_dim",
    "meta_modules",
]

TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_BN_TF = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def feature_dim(spec: ArchSpec) -> int:
    """The width of h: 2048w for bottleneck nets, 512w for basic-block nets (SPEC §1)."""
    depth, width, _ = spec.depth_width_sk
    return scaled_channels(512, width) * (BottleneckBlock.expansion if BLOCKS_PER_STAGE[depth][0] else 1)


@dataclass(frozen=True)
class ArchSpec:
    """What a checkpoint holds: backbone, projection head (0 = none), supervised head (0 = none).

    ``head_layers`` = 1 is the paper's "linear" head (TF name ``l_0``); otherwise layers are ``nl_J``.
    """

    backbone: str
    small_images: bool = False
    head_layers: int = 3
    head_dim: int = 128
    num_classes: int = 0

    @property
    def depth_width_sk(self) -> tuple[int, float, float]:
        return parse_backbone_name(self.backbone)


@dataclass(frozen=True)
class Slot:
    """One tensor: our key (relative: ``backbone.*``, ``head.layers.J.*``, ``supervised.*``), its shape in
    our layout, the TF1 name, the TF2 object path (without :data:`TF2_SUFFIX`) and the layout change
    (``conv``: HWIO -> OIHW, ``dense``: transpose, ``none``)."""

    key: str
    shape: tuple[int, ...]
    tf1: str
    tf2: str
    layout: str
    trainable: bool = True

    def tf_shape(self) -> tuple[int, ...]:
        """The shape as TensorFlow stores it."""
        if self.layout == "conv":
            o, i, h, w = self.shape
            return (h, w, i, o)
        if self.layout == "dense":
            return (self.shape[1], self.shape[0])
        return self.shape


def backbone_name(depth: int, width: float, sk: bool) -> str:
    """``r{depth}_{width}x_sk{0|1}`` with an integer width written without decimals."""
    w = f"{int(width)}" if float(width).is_integer() else f"{width:g}"
    return f"r{depth}_{w}x_sk{int(sk)}"


class _Counter:
    """TF1 layer naming: ``conv2d``, ``conv2d_1``, ... per layer type, in creation order."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        return kind if n == 0 else f"{kind}_{n}"


def _conv_slot(key: str, conv: nn.Conv2d, tf1: str, tf2: str) -> Slot:
    return Slot(f"{key}.weight", tuple(conv.weight.shape), f"{tf1}/kernel", f"{tf2}/kernel", "conv")


def _bn_slots(key: str, bn: nn.Module, tf1: str, tf2: str) -> Iterator[Slot]:
    for attr, tf_attr in _BN_TF.items():
        tensor = getattr(bn, attr, None)
        if tensor is None:  # the head's last BN has no beta
            continue
        shape, trainable = tuple(tensor.shape), attr in ("weight", "bias")
        yield Slot(f"{key}.{attr}", shape, f"{tf1}/{tf_attr}", f"{tf2}/{tf_attr}", "none", trainable)


def _meta_backbone(spec: ArchSpec) -> ResNet:
    depth, width, sk = spec.depth_width_sk
    with meta_modules():
        return ResNet(depth, width, sk_ratio=sk, small_images=spec.small_images)


def _stem_slots(backbone: ResNet, c: _Counter) -> Iterator[tuple[str, nn.Module, str, str]]:
    """(our key, module, TF1 name, TF2 path) of the stem; TF2 indices are positions in
    ``initial_conv_relu_max_pool`` (identity and pooling layers take positions too)."""
    stem = backbone.stem
    if backbone.small_images:
        positions = {"conv1": 0, "bn1": 2}
    elif backbone.sk_ratio > 0:
        positions = {"conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "conv3": 4, "bn3": 6}
    else:
        positions = {"conv1": 0, "bn1": 2}
    for name, pos in positions.items():
        module = getattr(stem, name)
        conv = isinstance(module, nn.Conv2d)
        tf1 = c("conv2d" if conv else "batch_normalization")
        tf2 = f"resnet_model/initial_conv_relu_max_pool/{pos}/" + ("conv2d" if conv else "bn")
        yield f"backbone.stem.{name}", module, tf1, tf2


def _block_slots(block: nn.Module, key: str, tf2: str, resnet_d: bool, stride: int, c: _Counter) -> Iterator:
    """Per block, in the official creation order: projection shortcut, then the main path (SPEC §8)."""
    shortcut: Any = getattr(block, "shortcut", None)
    bottleneck = isinstance(block, BottleneckBlock)
    if isinstance(shortcut, nn.Sequential):
        offset = (2 if stride > 1 else 1) if resnet_d else 0  # FixedPadding / AveragePooling2D layers first
        listname = "projection_layers" if bottleneck else "shortcut_layers"
        yield f"{key}.shortcut.conv", shortcut.conv, c("conv2d"), f"{tf2}/{listname}/{offset}/conv2d"
        yield f"{key}.shortcut.bn", shortcut.bn, c("batch_normalization"), f"{tf2}/{listname}/{offset + 1}/bn"
    if isinstance(block, BasicBlock):
        main = f"{tf2}/conv2d_bn_layers"
        for i, name in enumerate(("conv1", "bn1", "conv2", "bn2")):
            module = getattr(block, name)
            conv = isinstance(module, nn.Conv2d)
            kind = "conv2d" if conv else "batch_normalization"
            yield f"{key}.{name}", module, c(kind), f"{main}/{i}/" + ("conv2d" if conv else "bn")
        return
    main = f"{tf2}/conv_relu_dropblock_layers"
    yield f"{key}.conv1", block.conv1, c("conv2d"), f"{main}/0/conv2d"
    yield f"{key}.bn1", block.bn1, c("batch_normalization"), f"{main}/1/bn"
    assert isinstance(block, BottleneckBlock)
    if block.sk is not None:
        sk, at = block.sk, f"{main}/3"
        yield f"{key}.sk.conv", sk.conv, c("conv2d"), f"{at}/conv2d_fixed_padding/conv2d"
        yield f"{key}.sk.bn", sk.bn, c("batch_normalization"), f"{at}/batch_norm_relu/bn"
        yield f"{key}.sk.reduce", sk.reduce, c("conv2d"), f"{at}/conv2d_0"
        yield f"{key}.sk.bn_reduce", sk.bn_reduce, c("batch_normalization"), f"{at}/batch_norm_relu_1/bn"
        yield f"{key}.sk.expand", sk.expand, c("conv2d"), f"{at}/conv2d_1"
        last = 5
    else:
        yield f"{key}.conv2", block.conv2, c("conv2d"), f"{main}/3/conv2d"
        yield f"{key}.bn2", block.bn2, c("batch_normalization"), f"{main}/4/bn"
        last = 6
    yield f"{key}.conv3", block.conv3, c("conv2d"), f"{main}/{last}/conv2d"
    yield f"{key}.bn3", block.bn3, c("batch_normalization"), f"{main}/{last + 1}/bn"


def _backbone_slots(backbone: ResNet) -> Iterator[Slot]:
    c = _Counter()
    modules = list(_stem_slots(backbone, c))
    for s, stage in enumerate(backbone.stages.children()):
        for b, block in enumerate(stage.children()):
            if getattr(block, "se", None) is not None:
                raise ValueError("squeeze-excitation blocks have no official checkpoints to map")
            stride = 2 if (b == 0 and s > 0) else 1
            tf2 = f"resnet_model/block_groups/{s}/layers/{b}"
            modules += _block_slots(block, f"backbone.stages.{s}.{b}", tf2, backbone.sk_ratio > 0, stride, c)
    for key, module, layer, tf2 in modules:
        if isinstance(module, nn.Conv2d):
            yield _conv_slot(key, module, f"base_model/{layer}", tf2)
        else:
            yield from _bn_slots(key, module, f"base_model/{layer}", tf2)


def _head_slots(spec: ArchSpec, in_dim: int) -> Iterator[Slot]:
    """The projection head's tensors (SPEC §2: hidden layers keep ``in_dim``, the last BN has no beta).
    Shapes are written out rather than read from a meta-device ProjectionHead, whose normal_ init costs
    seconds on ``meta`` for R152 3x's 6144-wide layers."""
    for j in range(spec.head_layers):
        last = j == spec.head_layers - 1
        out_dim = spec.head_dim if last else in_dim
        scope = "l_0" if spec.head_layers == 1 else f"nl_{j}"
        tf1, tf2, key = f"head_contrastive/{scope}", f"_projection_head/linear_layers/{j}", f"head.layers.{j}"
        yield Slot(
            f"{key}.linear.weight", (out_dim, in_dim), f"{tf1}/dense/kernel", f"{tf2}/dense/kernel", "dense"
        )
        for attr, tf_attr in _BN_TF.items():
            if not (last and attr == "bias"):
                tf1_bn, tf2_bn = f"{tf1}/batch_normalization/{tf_attr}", f"{tf2}/bn_relu/bn/{tf_attr}"
                trainable = attr in ("weight", "bias")
                yield Slot(f"{key}.bn.{attr}", (out_dim,), tf1_bn, tf2_bn, "none", trainable)


def _supervised_slots(in_dim: int, num_classes: int) -> Iterator[Slot]:
    tf1, tf2 = "head_supervised/linear_layer/dense", "supervised_head/linear_layer/dense"
    yield Slot("supervised.weight", (num_classes, in_dim), f"{tf1}/kernel", f"{tf2}/kernel", "dense")
    yield Slot("supervised.bias", (num_classes,), f"{tf1}/bias", f"{tf2}/bias", "none")


@functools.lru_cache(maxsize=64)
def expected_slots(spec: ArchSpec, supervised_in_dim: int | None = None) -> tuple[Slot, ...]:
    """Every tensor of ``spec`` in official creation order (backbone, projection head, supervised head).

    ``supervised_in_dim``: the supervised head's input width (default h's width; the first head layer's
    output has the same width, so the shapes never tell which of the two the head reads).
    """
    slots = list(_cached_backbone_slots(spec.backbone, spec.small_images))
    h_dim = feature_dim(spec)
    if spec.head_layers > 0:
        slots += _head_slots(spec, h_dim)
    if spec.num_classes > 0:
        slots += _supervised_slots(supervised_in_dim or h_dim, spec.num_classes)
    return tuple(slots)


@functools.lru_cache(maxsize=32)
def _cached_backbone_slots(backbone: str, small_images: bool) -> tuple[Slot, ...]:
    return tuple(_backbone_slots(_meta_backbone(ArchSpec(backbone, small_images))))
