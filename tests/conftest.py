"""Shared fixtures: a tiny pretraining checkpoint made once per session through the CLI."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from simclrv2.cli import main

TINY_PRETRAIN = [
    "data.name=synthetic",
    "data.synthetic_size=96",
    "model.backbone=r18_0.25x_sk0",
    "batch_size=32",
    "epochs=2",
    "optim.warmup_epochs=0.5",
    "precision=fp32",
    "log_every_steps=1",
    "eval.batch_size=64",
    "eval.knn_k=20",
    "max_steps=2",
]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="session")
def pretrained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of a 2-step pretraining run on synthetic data (r18_0.25x_sk0, 3-layer head)."""
    run = tmp_path_factory.mktemp("pretrain") / "run"
    assert main(["pretrain", *sets(*TINY_PRETRAIN, f"run_dir={run}")]) == 0
    return run / "last.pt"


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """A test that sets torch's thread count (e.g. to 1 for a timing it documents) must not leave every later
    test of the session on that count: on 2 cores that made the rest of the suite run on one."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _have_fashion_mnist() -> bool:
    from simclrv2.data import find_fashion_mnist

    try:
        find_fashion_mnist(None)
    except FileNotFoundError:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``fashion_mnist`` need the real data set. Without it they are skipped on a developer's
    machine, but not under CI (``CI`` set), where ``make test`` installs it: there they fail loudly."""
    if os.environ.get("CI") or _have_fashion_mnist():
        return
    skip = pytest.mark.skip(reason="needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    for item in items:
        if "fashion_mnist" in item.keywords:
            item.add_marker(skip)
