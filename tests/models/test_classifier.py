from pathlib import Path

import pytest
import torch

from simclrv2.checkpoint import CheckpointError, load_checkpoint
from simclrv2.models import FineTuneModel, ProjectionHead, create_backbone, load_pretrained_into


def _model(k: int, head_layers: int = 3, backbone: str = "r18_0.25x_sk0") -> FineTuneModel:
    b = create_backbone(backbone, small_images=True)
    return FineTuneModel(b, ProjectionHead(b.num_features, head_layers, 16), k, num_classes=5)


@pytest.mark.parametrize(("k", "layers", "in_dim"), [(0, 0, 128), (1, 1, 128), (2, 2, 128), (-1, 3, 16)])
def test_fine_tune_from_layer_k(k: int, layers: int, in_dim: int) -> None:
    torch.manual_seed(0)
    model = _model(k)
    assert model.num_head_layers == layers and model.num_features == in_dim
    head_keys = {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("head.")}
    assert head_keys == {str(i) for i in range(layers)}
    x = torch.rand(4, 3, 16, 16)
    assert model(x).shape == (4, 5) and model.features(x).shape == (4, in_dim)
    assert torch.count_nonzero(model(x)) == 0  # zero-initialised classifier
    # With a zero classifier only the classifier gets gradients at the first step; after one update the
    # kept head layers and the backbone do too (inner block convs stay at 0 behind the zero-init block BN).
    torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    with torch.no_grad():
        for p in model.classifier.parameters():
            p -= p.grad
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    assert all(p.grad is not None for p in model.parameters())
    trained = [n for n, p in model.named_parameters() if p.grad is not None and torch.any(p.grad != 0)]
    for prefix in ["classifier.weight", "backbone.stem", *(f"head.layers.{i}.linear" for i in range(layers))]:
        assert any(n.startswith(prefix) for n in trained), prefix


def test_from_layer_beyond_the_head_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 layers"):
        _model(4)
    with pytest.raises(ValueError, match="0 layers"):
        FineTuneModel(create_backbone("r18_0.25x_sk0"), None, 1, 10)


def test_strict_loading_of_a_pretrain_checkpoint(pretrained_checkpoint: Path) -> None:
    state = load_checkpoint(pretrained_checkpoint, stage="pretrain")["model"]
    b = create_backbone("r18_0.25x_sk0", small_images=True)
    model = FineTuneModel(b, ProjectionHead(b.num_features, 3, 128), 1, num_classes=10)
    dropped = load_pretrained_into(model, state)
    assert dropped and all(k.startswith(("head.layers.1.", "head.layers.2.", "classifier.")) for k in dropped)
    assert torch.equal(model.head.layers[0].linear.weight, state["model.head.layers.0.linear.weight"])
    assert torch.count_nonzero(model.classifier.weight) == 0

    wider = create_backbone("r18_0.5x_sk0", small_images=True)
    bad = FineTuneModel(wider, ProjectionHead(wider.num_features, 3, 128), 1, num_classes=10)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*backbone\."):
        load_pretrained_into(bad, state)
    no_head = {k: v for k, v in state.items() if not k.startswith("model.head.layers.0.")}
    with pytest.raises(CheckpointError, match=r"missing .*head\.layers\.0\.linear\.weight"):
        load_pretrained_into(model, no_head)
    with pytest.raises(CheckpointError, match=r"unexpected .*extra\.weight"):
        load_pretrained_into(model, {**state, "model.extra.weight": torch.zeros(1)})
