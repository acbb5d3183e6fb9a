"""Projection head that returns every layer's output, and the zero-initialised classifier (SPEC §2)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Classifier", "ProjectionHead", "ProjectionLayer", "ScaleOnlyBatchNorm1d"]

HEAD_INIT_STD = 0.01  # TF LinearLayer: RandomNormal(stddev=0.01), not truncated


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d with γ but no β (TF ``center=False``), for the head's last layer (SPEC §2).

    β is not a parameter at all (not in ``parameters()`` nor the state dict), so no optimiser, weight decay or
    checkpoint ever sees one. Subclassing BatchNorm1d keeps it a ``_BatchNorm``: parameter-group rules that
    exclude BN parameters recognise its γ, and ``SyncBatchNorm.convert_sync_batchnorm`` carries γ over and
    keeps β absent (recent torch passes ``bias=module.bias is not None``; older torch assigns ``None``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True)
        # F.batch_norm accepts bias=None; registering None removes β from parameters() and state_dict().
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        # Older torch versions zero the bias unconditionally here; do only what applies.
        self.reset_running_stats()
        nn.init.ones_(self.weight)


class ProjectionLayer(nn.Module):
    """One head layer: Linear (no bias, N(0, 0.01)) → BN, then ReLU unless it is the last layer (SPEC §2).

    Hidden layers use a BN with β and γ; the last layer's BN has γ only. The Linear has no bias because the BN
    right after it makes one redundant (the official code drops it whenever a BN follows).
    """

    def __init__(self, in_dim: int, out_dim: int, last: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.normal_(self.linear.weight, mean=0.0, std=HEAD_INIT_STD)
        self.bn: nn.BatchNorm1d = ScaleOnlyBatchNorm1d(out_dim) if last else nn.BatchNorm1d(out_dim)
        self.relu: nn.Module = nn.Identity() if last else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.linear(x)))


class ProjectionHead(nn.Module):
    """SimCLRv2 projection head g(·) returning ``[h, out_1, ..., z]`` (SPEC §2).

    Args:
        in_dim: dimension of the backbone feature h (``ResNet.num_features``).
        num_layers: 3 for SimCLRv2 (default); 1 is the paper's "linear" head (one Linear to ``out_dim`` + BN
            without β); 0 means no head (the list is just ``[h]``).
        out_dim: dimension of z, the contrastive embedding (128).

    Hidden layers keep the input width. Element k of the output list is what fine-tuning from head layer k
    classifies (k = 0: h, k = 1: the SimCLRv2 default for 1%/10% labels, k = -1: z); ``out_dims[k]`` is its
    dimension.
    """

    def __init__(self, in_dim: int, num_layers: int = 3, out_dim: int = 128) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be positive, got in_dim={in_dim}, out_dim={out_dim}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0 (0 = no head), got {num_layers}")
        self.in_dim = in_dim
        self.num_layers = num_layers
        self.out_dims: list[int] = [in_dim]
        layers = []
        for index in range(num_layers):
            last = index == num_layers - 1
            layer_out = out_dim if last else in_dim
            layers.append(ProjectionLayer(in_dim, layer_out, last=last))
            self.out_dims.append(layer_out)
        self.layers = nn.ModuleList(layers)

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        outputs = [h]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        return outputs


class Classifier(nn.Linear):
    """Fine-tuning / linear-evaluation classifier: Linear with bias, all zero-initialised (SPEC §2).

    Zero init makes the first logits all equal (uniform softmax), so fine-tuning starts from a neutral
    classifier instead of a random one on top of the pretrained features.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__(in_dim, num_classes, bias=True)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
