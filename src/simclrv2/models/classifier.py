"""The fine-tuned network: backbone + head layers 1..k + a new zero-initialised classifier (SPEC §2).

Submodule names match the pretraining model (``backbone.*``, ``head.layers.{i}.*``), so a pretrain
checkpoint loads with only the ``model.`` prefix stripped, and :func:`load_pretrained_into` can say exactly
which keys may be missing (STYLE.md lesson 9).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from simclrv2.checkpoint import CheckpointError
from simclrv2.models.heads import Classifier, ProjectionHead

__all__ = ["FineTuneModel", "kept_head_layers", "load_pretrained_into"]


def kept_head_layers(head_depth: int, from_layer: int) -> int:
    """How many head layers fine-tuning from layer ``from_layer`` keeps (k = -1: all of them).

    Raises ValueError naming the depth when k is beyond the head.
    """
    if from_layer == -1:
        return head_depth
    if not 0 <= from_layer <= head_depth:
        raise ValueError(
            f"from_layer={from_layer} is not available: the projection head has {head_depth} layers, "
            f"so k must be in 0..{head_depth} or -1 (the last layer, z)"
        )
    return from_layer


class _KeptHead(nn.Module):
    """The first layers of a projection head, under the same ``layers.{i}`` names."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class FineTuneModel(nn.Module):
    """``classifier(head.layers[:k](backbone(x)))`` (SPEC §2: fine-tune from head layer k).

    Args:
        backbone: the ResNet (its ``num_features`` is h's dimension).
        head: the pretrained projection head, or None (then only k = 0 is possible).
        from_layer: k. 0 classifies h (no head layers); 1 keeps head layer 1 (the SimCLRv2 default for
            1%/10% labels); -1 keeps every layer (classifier on z).
        num_classes: outputs of the new classifier (zero-initialised Linear with bias).

    Layers after k are dropped. The kept head layers are trained along with everything else.
    """

    def __init__(
        self, backbone: nn.Module, head: ProjectionHead | None, from_layer: int, num_classes: int
    ) -> None:
        super().__init__()
        depth = head.num_layers if head is not None else 0
        k = kept_head_layers(depth, from_layer)
        self.from_layer = from_layer
        self.num_head_layers = k
        self.backbone = backbone
        self.head: _KeptHead | None = None
        in_dim = int(getattr(backbone, "num_features"))  # noqa: B009 - ResNet attribute, not nn.Module's
        if k > 0:
            assert head is not None
            self.head = _KeptHead(list(head.layers[:k]))
            in_dim = head.out_dims[k]
        self.num_features = in_dim
        self.classifier = Classifier(in_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The classifier's input: h for k = 0, else the output of head layer k."""
        h = self.backbone(x)
        return self.head(h) if self.head is not None else h

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def load_pretrained_into(model: FineTuneModel, pretrain_state: Mapping[str, Tensor]) -> list[str]:
    """Copy a pretraining state dict (``PretrainModule``: ``model.backbone.*``, ``model.head.layers.*``,
    ``classifier.*``) into ``model``, strictly.

    Only the head layers after k (not part of the fine-tuned model) and the online probe ``classifier.*``
    may be left over; the new classifier is the only thing allowed to be missing. Any other missing or
    unexpected key raises :class:`CheckpointError` listing the keys. Returns the dropped keys.
    """
    state = {}
    for key, value in pretrain_state.items():
        state[key[len("model.") :] if key.startswith("model.") else key] = value
    kept = model.num_head_layers
    own = model.state_dict()

    def droppable(key: str) -> bool:  # the online probe, or a head layer after k
        layer = re.match(r"head\.layers\.(\d+)\.", key)
        return key.startswith("classifier.") or (layer is not None and int(layer.group(1)) >= kept)

    dropped = sorted(k for k in state if k not in own and droppable(k))
    unexpected = sorted(k for k in state if k not in own and k not in dropped)
    missing = sorted(k for k in own if k not in state and not k.startswith("classifier."))
    # A kept head layer must come from the checkpoint, so head.layers.{i>=k} are only allowed as extras.
    shape_bad = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and not k.startswith("classifier.") and state[k].shape != own[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys: {_first(unexpected)}")
    if shape_bad:
        problems.append(f"{len(shape_bad)} shape mismatches (checkpoint vs model): {_first(shape_bad)}")
    if problems:
        raise CheckpointError(
            "the pretrained weights do not fit the fine-tuning model ("
            + "; ".join(problems)
            + "). Was the checkpoint made with another backbone or head?"
        )
    to_load = {k: v for k, v in state.items() if k in own and not k.startswith("classifier.")}
    with torch.no_grad():
        result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("classifier.") for k in result.missing_keys), result.missing_keys
    return dropped


def _first(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
