"""The fast pretraining path is a faster implementation of the typical recipe's step, not another function.

Both take one step on the same model weights and the same augmented views: ours is
:func:`simclrv2.engine.pretrain.contrastive_step` (channels-last, foreach LARS, bf16 autocast by default), the
reference is :func:`benchmarks.reference.reference_step` (NCHW, fp32, per-parameter LARS).

Tolerances, from measurements on r18_0.25x with 2 x 32 views (3 seeds):

* float64 (weights and views): loss and updated weights agree to ~1e-14: the two steps are the same function.
* fp32: the loss agrees to ~1e-7 relative; the weight *updates* differ by up to 6e-3 relative (whole model)
  because NCHW and channels-last sum in different orders, and a pre-activation within rounding of 0 flips
  its ReLU mask: fp32 NCHW vs float64 alone differs by up to 3e-3 the same way. The bound is 2e-2, with a
  gradient cosine >= 0.9999.
* bf16 autocast (ours' default on this CPU) against the fp32 reference: the loss within 0.5% (measured
  <= 0.1%) and the gradient's direction within cos >= 0.95 (measured >= 0.983); bf16 has an 8-bit mantissa,
  so the update itself differs by ~20%.
"""

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `benchmarks` package

from benchmarks.reference import LoopLARS, reference_step, typical_nt_xent

from simclrv2.data import AugmentConfig, load_dataset, two_view_batch
from simclrv2.engine.pretrain import PretrainModule, contrastive_step
from simclrv2.losses import nt_xent
from simclrv2.models import ProjectionHead, SimCLRModel, create_backbone
from simclrv2.optim import LARS, param_groups

N = 32  # images; 2N views
LR = 1.2  # the demo's peak LR: 0.075 * sqrt(256)
CPU = torch.device("cpu")


def _model_and_views(seed: int, n: int, crop: int) -> tuple[SimCLRModel, Tensor, Tensor]:
    torch.manual_seed(seed)
    backbone = create_backbone("r18_0.25x_sk0", small_images=True)
    model = SimCLRModel(backbone, ProjectionHead(backbone.num_features))
    data = load_dataset("synthetic", "train", synthetic_size=n)
    gen = torch.Generator().manual_seed(seed)
    views = two_view_batch(data.images, AugmentConfig(crop_size=crop, color_strength=0.5), gen)
    return model, views, data.labels


def _both_steps(
    seed: int, dtype: torch.dtype, precision: str, n: int = N, crop: int = 32
) -> dict[str, object]:
    """One step of each path from the same weights on the same views; the losses, the flattened
    gradients and weight updates, and the models."""
    model, views, labels = _model_and_views(seed, n, crop)
    ours_model = copy.deepcopy(model).to(dtype)
    ref_model = copy.deepcopy(model).to(dtype)
    start = [p.detach().clone() for p in ref_model.parameters()]
    ours = PretrainModule(ours_model, None).to(memory_format=torch.channels_last)
    ours_opt = LARS(param_groups(ours, weight_decay=1e-4), lr=LR, momentum=0.9, weight_decay=1e-4)
    ref_opt = LoopLARS(param_groups(ref_model, weight_decay=1e-4), lr=LR, momentum=0.9, weight_decay=1e-4)
    x = views.to(dtype)

    loss_ours, _ = contrastive_step(ours, ours_opt, x, labels, 0.5, CPU, precision, channels_last=True)
    loss_ref = reference_step(ref_model, ref_opt, x[:n], x[n:], 0.5)

    def flat(tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.detach().flatten().double() for t in tensors])

    return {
        "loss": (loss_ours.item(), loss_ref.item()),
        "grad": (
            flat([p.grad for p in ours_model.parameters()]),
            flat([p.grad for p in ref_model.parameters()]),
        ),
        "update": (
            flat([p - s for p, s in zip(ours_model.parameters(), start, strict=True)]),
            flat([p - s for p, s in zip(ref_model.parameters(), start, strict=True)]),
        ),
        "models": (ours_model, ref_model),
    }


def _rel(a: Tensor, b: Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _cos(a: Tensor, b: Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_in_float64_the_fast_step_and_the_reference_step_are_the_same_function() -> None:
    r = _both_steps(seed=0, dtype=torch.float64, precision="fp32", n=16, crop=16)  # float64 convs are slow
    loss_ours, loss_ref = r["loss"]
    assert loss_ours == pytest.approx(loss_ref, rel=1e-12)
    assert _rel(*r["update"]) < 1e-10
    ours_model, ref_model = r["models"]
    for a, b in zip(ours_model.buffers(), ref_model.buffers(), strict=True):  # BN running statistics
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_in_fp32_the_fast_step_and_the_reference_step_agree(seed: int) -> None:
    r = _both_steps(seed=seed, dtype=torch.float32, precision="fp32")
    loss_ours, loss_ref = r["loss"]
    assert loss_ours == pytest.approx(loss_ref, rel=1e-5)
    assert _cos(*r["grad"]) > 0.9999
    assert _rel(*r["update"]) < 2e-2


def test_bf16_fast_step_agrees_with_the_fp32_reference_within_the_stated_tolerance() -> None:
    r = _both_steps(seed=0, dtype=torch.float32, precision="bf16")
    loss_ours, loss_ref = r["loss"]
    assert loss_ours == pytest.approx(loss_ref, rel=5e-3)
    assert _cos(*r["grad"]) > 0.95


def test_nt_xent_equals_the_typical_repositories_formula() -> None:
    z = torch.randn(2 * N, 128, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nt_xent(z[:N], z[N:], 0.5), typical_nt_xent(z[:N], z[N:], 0.5))


def test_loop_lars_is_the_packages_lars_written_per_parameter() -> None:
    """The reference's optimiser is the same update rule (so the speed comparison compares code, not math),
    including the per-group flags (no LARS / no weight decay for BN and biases)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 30 * 30, 4))
    twin = copy.deepcopy(net)
    start = [p.detach().clone() for p in net.parameters()]
    a = LARS(param_groups(net, weight_decay=1e-3), lr=0.5, momentum=0.9, weight_decay=1e-3)
    b = LoopLARS(param_groups(twin, weight_decay=1e-3), lr=0.5, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(3):
        for model, opt in ((net, a), (twin, b)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert all(not torch.equal(p, s) for p, s in zip(net.parameters(), start, strict=True))  # all moved
