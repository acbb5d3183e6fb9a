"""The official SimCLRv2 network written with TensorFlow ops, for the parity tests (not a test module).

It follows the official code function by function (google-research/simclr at 383d414):

- ``tf2/resnet.py``: ``Conv2dFixedPadding`` / ``FixedPadding`` (explicit (k-1)//2 + rest padding, VALID, for
  strided convs; SAME for stride 1), ``BatchNormRelu`` (unfused BN, epsilon 1e-5, ``fused=False``),
  ``SK_Conv2D`` (one 3x3 conv to 2F, split, mean of the sum, 1x1 -> BN-ReLU -> 1x1 to 2F, softmax over the
  two streams), ``BottleneckBlock`` (ResNet-D projection: FixedPadding(2) + 2x2 AveragePooling2D VALID for
  stride 2, SAME for stride 1, then a 1x1 conv and BN), ``Resnet`` (7x7 s2 stem, or the 3x3 deep stem for SK,
  BN-ReLU, 3x3 s2 SAME max-pool; four block groups; global mean);
- ``tf2/model.py``: ``LinearLayer`` / ``ProjectionHead`` (dense without bias + BN, ReLU on hidden layers, the
  last BN without beta) and ``SupervisedHead`` (dense with bias on ``hiddens_list[ft_proj_selector]``).

The module tree mirrors the official Keras objects attribute for attribute (``resnet_model.block_groups[g]
.layers[b].conv_relu_dropblock_layers[i].conv2d.kernel``, with variable-free placeholders where the official
lists hold padding, pooling, identity or DropBlock layers), so ``tf.train.Checkpoint(model=...)`` writes the
official TF2 object paths by TF's own rules; a counter assigns the TF1 names (``base_model/conv2d_N``,
``base_model/batch_normalization_N``) in creation order as ``tf.layers`` does in the official ``resnet.py``.
The tests check both name sets against the lists recorded from the official code. Every variable gets random
values, BN statistics included, so that no layer is an identity.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

BN_EPS = 1e-5


class _Names:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.tf1: dict[str, tf.Variable] = {}

    def layer(self, kind: str) -> str:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        return f"base_model/{kind}" if n == 0 else f"base_model/{kind}_{n}"


class _Placeholder(tf.Module):
    """A layer without variables (FixedPadding, pooling, IdentityLayer, DropBlock)."""


class _Kernel(tf.Module):
    """Keras ``Conv2D`` / ``Dense``: a ``kernel`` (and optionally ``bias``) variable."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, ...], bias: int = 0) -> None:
        super().__init__()
        fan_in = int(np.prod(shape[:-1]))  # std sqrt(1 / fan_in): the official VarianceScaling() init
        self.kernel = tf.Variable(
            rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1 / fan_in))
        )
        if bias:
            self.bias = tf.Variable(rng.normal(0, 0.1, bias).astype(np.float32))


class _BN(tf.Module):
    """Keras ``BatchNormalization`` (unfused, as ``fused=False`` in ``BatchNormRelu``), inference mode."""

    def __init__(self, rng: np.random.Generator, channels: int, center: bool = True) -> None:
        super().__init__()
        self.gamma = tf.Variable(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        if center:
            self.beta = tf.Variable(rng.normal(0, 0.2, channels).astype(np.float32))
        self.moving_mean = tf.Variable(rng.normal(0, 0.2, channels).astype(np.float32), trainable=False)
        self.moving_variance = tf.Variable(
            rng.uniform(0.5, 2.0, channels).astype(np.float32), trainable=False
        )

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        beta = getattr(self, "beta", None)
        return tf.nn.batch_normalization(x, self.moving_mean, self.moving_variance, beta, self.gamma, BN_EPS)

    def register(self, names: _Names, prefix: str) -> None:
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            if hasattr(self, attr):
                names.tf1[f"{prefix}/{attr}"] = getattr(self, attr)


class BatchNormRelu(tf.Module):
    def __init__(self, rng: np.random.Generator, names: _Names, channels: int, relu: bool = True) -> None:
        super().__init__()
        self.relu = relu
        self.bn = _BN(rng, channels)
        self.bn.register(names, names.layer("batch_normalization"))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = self.bn(x)
        return tf.nn.relu(x) if self.relu else x


def _fixed_padding(x: tf.Tensor, kernel_size: int) -> tf.Tensor:
    total = kernel_size - 1
    return tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])


class Conv2dFixedPadding(tf.Module):
    def __init__(self, rng, names: _Names, cin: int, cout: int, k: int, stride: int) -> None:
        super().__init__()
        self.k, self.stride = k, stride
        self.conv2d = _Kernel(rng, (k, k, cin, cout))
        names.tf1[f"{names.layer('conv2d')}/kernel"] = self.conv2d.kernel

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self.stride > 1:
            x = _fixed_padding(x, self.k)
        return tf.nn.conv2d(x, self.conv2d.kernel, self.stride, "SAME" if self.stride == 1 else "VALID")


class SK_Conv2D(tf.Module):
    def __init__(self, rng, names: _Names, cin: int, filters: int, stride: int, sk_ratio: float) -> None:
        super().__init__()
        self.conv2d_fixed_padding = Conv2dFixedPadding(rng, names, cin, 2 * filters, 3, stride)
        self.batch_norm_relu = BatchNormRelu(rng, names, 2 * filters)
        mid = max(int(filters * sk_ratio), 32)
        self.conv2d_0 = _Kernel(rng, (1, 1, filters, mid))
        names.tf1[f"{names.layer('conv2d')}/kernel"] = self.conv2d_0.kernel
        self.batch_norm_relu_1 = BatchNormRelu(rng, names, mid)
        self.conv2d_1 = _Kernel(rng, (1, 1, mid, 2 * filters))
        names.tf1[f"{names.layer('conv2d')}/kernel"] = self.conv2d_1.kernel

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = self.batch_norm_relu(self.conv2d_fixed_padding(x))
        x = tf.stack(tf.split(x, 2, axis=3))
        g = tf.reduce_mean(tf.reduce_sum(x, axis=0), [1, 2], keepdims=True)
        g = self.batch_norm_relu_1(tf.nn.conv2d(g, self.conv2d_0.kernel, 1, "SAME"))
        mixing = tf.nn.conv2d(g, self.conv2d_1.kernel, 1, "SAME")
        mixing = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=3)), axis=0)
        return tf.reduce_sum(x * mixing, axis=0)


class _AvgPool(_Placeholder):
    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.avg_pool2d(x, 2, self.stride, "SAME" if self.stride == 1 else "VALID")


class BottleneckBlock(tf.Module):
    def __init__(self, rng, names: _Names, cin: int, filters: int, stride: int, projection: bool, sk: float):
        super().__init__()
        self.projection_layers: list[tf.Module] = []
        if projection:
            if sk > 0:
                if stride > 1:
                    self.projection_layers.append(_Placeholder())  # FixedPadding(2)
                self.projection_layers.append(_AvgPool(stride))
                self.projection_layers.append(Conv2dFixedPadding(rng, names, cin, 4 * filters, 1, 1))
            else:
                self.projection_layers.append(Conv2dFixedPadding(rng, names, cin, 4 * filters, 1, stride))
            self.projection_layers.append(BatchNormRelu(rng, names, 4 * filters, relu=False))
        self.shortcut_dropblock = _Placeholder()
        layers: list[tf.Module] = [
            Conv2dFixedPadding(rng, names, cin, filters, 1, 1),
            BatchNormRelu(rng, names, filters),
            _Placeholder(),
        ]
        if sk > 0:
            layers.append(SK_Conv2D(rng, names, filters, filters, stride, sk))
        else:
            layers += [
                Conv2dFixedPadding(rng, names, filters, filters, 3, stride),
                BatchNormRelu(rng, names, filters),
            ]
        layers += [
            _Placeholder(),
            Conv2dFixedPadding(rng, names, filters, 4 * filters, 1, 1),
            BatchNormRelu(rng, names, 4 * filters, relu=False),
            _Placeholder(),
        ]
        self.conv_relu_dropblock_layers = layers
        self.sk = sk
        self.stride = stride

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        shortcut = x
        for layer in self.projection_layers:
            if type(layer) is _Placeholder:  # FixedPadding(2): bottom/right
                shortcut = tf.pad(shortcut, [[0, 0], [0, 1], [0, 1], [0, 0]])
            else:
                shortcut = layer(shortcut)
        for layer in self.conv_relu_dropblock_layers:
            if type(layer) is not _Placeholder:
                x = layer(x)
        return tf.nn.relu(x + shortcut)


class BlockGroup(tf.Module):
    def __init__(self, rng, names, cin: int, filters: int, blocks: int, stride: int, sk: float) -> None:
        super().__init__()
        self.layers = [BottleneckBlock(rng, names, cin, filters, stride, True, sk)]
        self.layers += [
            BottleneckBlock(rng, names, 4 * filters, filters, 1, False, sk) for _ in range(1, blocks)
        ]

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class Resnet(tf.Module):
    def __init__(self, rng, names: _Names, depth: int, width: float, sk: float) -> None:
        super().__init__()
        half, full = round(32 * width), round(64 * width)  # the official widths are integers: 32w, 64w
        stem: list[tf.Module] = []
        if sk > 0:
            stem += [
                Conv2dFixedPadding(rng, names, 3, half, 3, 2),
                BatchNormRelu(rng, names, half),
                Conv2dFixedPadding(rng, names, half, half, 3, 1),
                BatchNormRelu(rng, names, half),
                Conv2dFixedPadding(rng, names, half, full, 3, 1),
            ]
        else:
            stem.append(Conv2dFixedPadding(rng, names, 3, full, 7, 2))
        stem += [_Placeholder(), BatchNormRelu(rng, names, full), _Placeholder(), _Placeholder()]
        self.initial_conv_relu_max_pool = stem
        self.block_groups = []
        cin = full
        for g, blocks in enumerate(BLOCKS[depth]):
            filters = full * 2**g
            self.block_groups.append(BlockGroup(rng, names, cin, filters, blocks, 1 if g == 0 else 2, sk))
            cin = 4 * filters

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        for layer in self.initial_conv_relu_max_pool:
            if type(layer) is not _Placeholder:
                x = layer(x)
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
        for group in self.block_groups:
            x = group(x)
        return tf.reduce_mean(x, [1, 2])


class LinearLayer(tf.Module):
    def __init__(self, rng, cin: int, cout: int, use_bias: bool, use_bn: bool) -> None:
        super().__init__()
        self.use_bn = use_bn
        if use_bn:
            self.bn_relu = tf.Module()
            self.bn_relu.bn = _BN(rng, cout, center=use_bias)
        self.dense = _Kernel(rng, (cin, cout), bias=0 if use_bn else cout)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.matmul(x, self.dense.kernel)
        return self.bn_relu.bn(x) if self.use_bn else x + self.dense.bias


class Model(tf.Module):
    """``resnet_model``, ``_projection_head`` (3 layers), ``supervised_head``; calling it gives h, the head
    outputs and the logits of the supervised head on h (k = 0) and on head layer 1 (k = 1)."""

    def __init__(self, depth: int, width: float, sk: float, num_classes: int, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        names = _Names()
        self.resnet_model = Resnet(rng, names, depth, width, sk)
        dim = 32 * round(64 * width)
        head = tf.Module()
        head.linear_layers = [
            LinearLayer(rng, dim, dim if j < 2 else 128, use_bias=j < 2, use_bn=True) for j in range(3)
        ]
        # tf.Module leaves attributes with a leading underscore out of checkpoints; Keras (the official
        # model) tracks them, so track this one by its official name explicitly.
        self._projection_head = head
        self._track_trackable(head, name="_projection_head")
        self.supervised_head = tf.Module()
        self.supervised_head.linear_layer = LinearLayer(rng, dim, num_classes, use_bias=True, use_bn=False)
        for j, layer in enumerate(self._projection_head.linear_layers):
            names.tf1[f"head_contrastive/nl_{j}/dense/kernel"] = layer.dense.kernel
            layer.bn_relu.bn.register(names, f"head_contrastive/nl_{j}/batch_normalization")
        names.tf1["head_supervised/linear_layer/dense/kernel"] = (
            self.supervised_head.linear_layer.dense.kernel
        )
        names.tf1["head_supervised/linear_layer/dense/bias"] = self.supervised_head.linear_layer.dense.bias
        self.names = names  # a plain object: not tracked, so not in the TF2 checkpoint

    def __call__(self, images_nhwc: tf.Tensor) -> dict[str, np.ndarray]:
        h = self.resnet_model(images_nhwc)
        outs = [h]
        for j, layer in enumerate(self._projection_head.linear_layers):
            x = layer(outs[-1])
            outs.append(tf.nn.relu(x) if j < 2 else x)
        logits = [self.supervised_head.linear_layer(outs[k]).numpy() for k in (0, 1)]
        return {"h": h.numpy(), "head": [o.numpy() for o in outs[1:]], "logits": logits}

    def save_tf1(self, prefix: str) -> str:
        """A TF1 checkpoint under the official names, written by ``tf.compat.v1.train.Saver``."""
        step = tf.Variable(1000, dtype=tf.int64)
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        saver = tf.compat.v1.train.Saver(var_list={**self.names.tf1, "global_step": step})
        return saver.save(None, prefix)

    def save_tf2(self, prefix: str) -> str:
        """A TF2 checkpoint as the official tf2/run.py writes it: ``tf.train.Checkpoint(model=...)``."""
        return tf.train.Checkpoint(model=self, global_step=tf.Variable(1000, dtype=tf.int64)).write(prefix)
