"""Backbone + projection head as one module for contrastive pretraining (SPEC §1-§3)."""

from __future__ import annotations

import torch
from torch import nn

from simclrv2.models.heads import ProjectionHead
from simclrv2.models.resnet import ResNet

__all__ = ["SimCLRModel"]


class SimCLRModel(nn.Module):
    """f(·) followed by g(·): ``forward(x)`` returns ``[h, out_1, ..., z]`` (see :class:`ProjectionHead`).

    Feed both augmented views concatenated along the batch (2N images, one pass), as the official code does,
    so every BN normalises with statistics over both views (SPEC §3: global BN over the whole batch).
    """

    def __init__(self, backbone: ResNet, head: ProjectionHead) -> None:
        super().__init__()
        if head.in_dim != backbone.num_features:
            raise ValueError(
                f"projection head expects {head.in_dim}-dim features but the backbone gives "
                f"{backbone.num_features}; build it as ProjectionHead(backbone.num_features, ...)"
            )
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone feature h alone (what linear evaluation and kNN read)."""
        return self.backbone(x)
