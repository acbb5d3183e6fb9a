"""Parameter groups: exclusions by module type, each trainable parameter exactly once (SPEC.md section 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclrv2.optim import LARS, param_groups


class GammaOnly(nn.Module):
    """A custom γ-only normaliser that is not a torch norm class: it opts out by class attribute."""

    no_weight_decay = True

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gamma


class GammaOnlyBatchNorm(nn.BatchNorm1d):
    """γ-only BN built by subclassing (as the project's head does): recognised by type."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.register_parameter("bias", None)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)  # weight decayed, bias not
        self.head = nn.Sequential(nn.Linear(6, 6, bias=False), GammaOnly(6), nn.Linear(6, 5, bias=False))
        self.head_bn = GammaOnlyBatchNorm(5)
        self.norms = nn.ModuleList([nn.LayerNorm(5), nn.GroupNorm(1, 5), nn.SyncBatchNorm(5)])
        self.classifier = nn.Linear(5, 3)
        self.classifier2 = nn.Linear(5, 2)  # a different module whose name merely starts the same


def groups_by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def names_in(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_every_parameter_in_exactly_one_group_with_the_right_flags() -> None:
    model = Net()
    groups = param_groups(model, weight_decay=1e-4)
    by_name = groups_by_name(groups)
    assert set(by_name) == {"decay", "no_decay", "classifier"}

    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids))
    assert set(all_ids) == {id(p) for p in model.parameters()}

    assert names_in(model, by_name["decay"]) == {
        "conv.weight",
        "fc.weight",
        "head.0.weight",
        "head.2.weight",
        "classifier2.weight",
    }
    assert names_in(model, by_name["no_decay"]) == {
        "bn.weight",
        "bn.bias",
        "fc.bias",
        "head.1.gamma",
        "head_bn.weight",
        "norms.0.weight",
        "norms.0.bias",
        "norms.1.weight",
        "norms.1.bias",
        "norms.2.weight",
        "norms.2.bias",
        "classifier.bias",
        "classifier2.bias",
    }
    assert names_in(model, by_name["classifier"]) == {"classifier.weight"}

    assert by_name["decay"]["weight_decay_enabled"] and by_name["decay"]["lars_adaptation"]
    assert by_name["decay"]["weight_decay"] == 1e-4
    for name in ("no_decay", "classifier"):
        assert by_name[name]["weight_decay_enabled"] is False
        assert by_name[name]["lars_adaptation"] is False
        assert by_name[name]["weight_decay"] == 0.0


def test_tf_style_classifier_weight_decay() -> None:
    by_name = groups_by_name(param_groups(Net(), weight_decay=1e-4, classifier_weight_decay=True))
    assert by_name["classifier"]["weight_decay_enabled"] is True
    assert by_name["classifier"]["weight_decay"] == 1e-4
    assert by_name["classifier"]["lars_adaptation"] is False


def test_custom_exclusion_prefixes_and_no_empty_groups() -> None:
    model = Net()
    by_name = groups_by_name(param_groups(model, 0.0, exclude_from_lars=("head", "classifier2")))
    assert names_in(model, by_name["classifier"]) == {"head.0.weight", "head.2.weight", "classifier2.weight"}

    plain = nn.Sequential(nn.Linear(3, 3, bias=False))
    groups = param_groups(plain, 1e-4)
    assert [g["name"] for g in groups] == ["decay"]


def test_frozen_and_shared_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # tied
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, 1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == 2  # tied weight once, frozen bias left out, model[1].bias
    assert id(model[0].bias) not in ids


def test_groups_drive_lars_and_sgd() -> None:
    model = Net()
    groups = param_groups(model, weight_decay=1e-4)
    LARS(groups, lr=0.1, weight_decay=1e-4)
    torch.optim.SGD(param_groups(model, weight_decay=1e-4), lr=0.1, momentum=0.9)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(Net(), -1.0)
    with pytest.raises(TypeError, match="tuple"):
        param_groups(Net(), 0.0, exclude_from_lars="classifier")  # type: ignore[arg-type]
