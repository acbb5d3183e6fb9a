"""The classifier stages' loop (fine-tuning, supervised baseline, augmented linear eval, distillation): the
official step rule over the repeated labeled set, the automatic batch for small sets, exact resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from simclrv2.data.datasets import ImageData
from simclrv2.engine.classify import ClassifierTrainer, TrainSettings, auto_batch_size, train_steps


def indexed_data(n: int, num_classes: int = 4) -> ImageData:
    """n 8x8 images whose pixels encode their index (in the first two channels), labels = index % classes."""
    idx = torch.arange(n)
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    images[:, 0] = (idx // 256).view(n, 1, 1).to(torch.uint8)
    images[:, 1] = (idx % 256).view(n, 1, 1).to(torch.uint8)
    images[:, 2] = torch.randint(
        0, 256, (n, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return ImageData(images, idx % num_classes, [str(c) for c in range(num_classes)], name="indexed")


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def trainer(
    run_dir: Path, data: ImageData, batch: int, epochs: int, seen: list[Tensor] | None = None, **kw
) -> ClassifierTrainer:
    settings = TrainSettings(
        stage="finetune", run_dir=run_dir, seed=3, device=torch.device("cpu"), precision="fp32",
        batch_size=batch, epochs=epochs, peak_lr=0.1, crop_size=8, crop_scale=(0.5, 1.0), channels_last=False,
        log_every_steps=1, show_progress=False, write_config=False, **kw,
    )  # fmt: skip
    torch.manual_seed(0)

    def loss_fn(model: nn.Module, images: Tensor, labels: Tensor, step: int) -> Tensor:
        if seen is not None:
            seen.append(labels.clone())
        return nn.functional.cross_entropy(model(images).float(), labels)

    model = TinyNet(len(data.classes))
    return ClassifierTrainer(settings, model, data, None, loss_fn=loss_fn if seen is not None else None)


@pytest.mark.parametrize("n", [8, 16, 24, 11, 21, 23])  # 1, 2, 3 batches of 8, and sizes that do not divide
@pytest.mark.parametrize("epochs", [1, 3])
def test_every_image_is_seen_epochs_times_and_the_step_count_is_the_official_one(
    tmp_path: Path, n: int, epochs: int
) -> None:
    data = indexed_data(n, num_classes=n)  # label = index: the batches say which images they hold
    seen: list[Tensor] = []
    t = trainer(tmp_path, data, batch=8, epochs=epochs, seen=seen)
    stats = t.fit()
    assert stats["step"] == stats["total_steps"] == n * epochs // 8 + 1 == train_steps(n, epochs, 8)
    assert len(seen) == stats["step"] and all(len(b) == 8 for b in seen)
    counts = Counter(torch.cat(seen).tolist())
    assert set(counts) == set(range(n))  # no image is left out (the old loop dropped each epoch's tail)
    extra = stats["step"] * 8 - n * epochs  # positions the "+ 1" step adds beyond epochs * n: 1..8 (<= n)
    assert 0 < extra <= 8
    assert set(counts.values()) <= {epochs, epochs + 1}  # epochs times, plus one for the last batch's images
    assert sum(c == epochs + 1 for c in counts.values()) == extra


def test_no_image_is_seen_twice_before_every_image_is_seen_once(tmp_path: Path) -> None:
    """Epoch e of the stream holds every image once: the batches run across epoch ends without dropping."""
    n = 21
    seen: list[Tensor] = []
    trainer(tmp_path, indexed_data(n, num_classes=n), batch=8, epochs=3, seen=seen).fit()
    stream = torch.cat(seen).tolist()
    for e in range(3):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))


def test_resume_across_an_epoch_end_gives_bit_identical_weights(tmp_path: Path) -> None:
    """21 images at batch 8: step 3 straddles the first epoch end; stop after it, resume, compare."""
    data = indexed_data(21)
    full = trainer(tmp_path / "full", data, batch=8, epochs=3)
    full.fit()
    part = trainer(tmp_path / "part", data, batch=8, epochs=3, max_steps=3)
    part.fit()
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=False)["step"] == 3
    rest = trainer(tmp_path / "part", data, batch=8, epochs=3)
    stats = rest.fit(resume=True)
    assert stats["step"] == full.total_steps == 21 * 3 // 8 + 1
    a, b = full.model.state_dict(), rest.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoints_are_written_at_every_epoch_end_of_the_stream(tmp_path: Path) -> None:
    steps_saved: list[int] = []
    t = trainer(tmp_path, indexed_data(21), batch=8, epochs=3)
    real_save = t.save
    t.save = lambda step: (steps_saved.append(step), real_save(step))[-1]  # type: ignore[method-assign]
    t.fit()
    # epoch ends after 21, 42, 63 images = inside steps 3, 6 and 8; the run ends at step 8 (63 // 8 + 1 = 8)
    assert steps_saved == [3, 6, 8]


@pytest.mark.parametrize(
    ("num_images", "batch"),
    [(1, 16), (100, 16), (200, 16), (600, 32), (1000, 64), (3000, 128), (6000, 256), (60000, 256)],
)
def test_automatic_batch_gives_about_12_steps_per_epoch_on_small_sets(num_images: int, batch: int) -> None:
    assert auto_batch_size(num_images) == batch
    if 16 * 12 <= num_images <= 256 * 12:
        assert 12 <= num_images / batch < 24
