"""Fitting a new linear classifier on frozen features before a classifier stage trains the whole network.

Not in the paper: its fine-tuning starts the classifier from zero and its students train for 400 epochs
from scratch. A short distillation whose student starts from the teacher's backbone (the demo's half epoch)
spends its budget relearning the teacher's classifier from the noisy targets of augmented views and ended
4-5 points below its teacher; fitted first, by L-BFGS logistic regression on the frozen features of (up to
:data:`WARM_START_IMAGES`) centre-cropped training images against the teacher's softened predictions (the
distillation targets of SPEC 6), it starts at the teacher's accuracy (docs/distillation.md). The same fit
against the labels is fine-tuning's ``warm_start`` option ("linear probe, then fine-tune", Kumar et al.,
2022), off by default: it did not help in benchmarks/finetune_ablation.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.data import ImageData
from simclrv2.data.subsets import subset_data
from simclrv2.engine.evaluate import extract_features

__all__ = ["WARM_START_IMAGES", "fit_classifier", "fit_logistic_regression", "warm_start_subset"]

WARM_START_IMAGES = 10_000


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, l2: float, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, full batch L-BFGS (strong Wolfe line search), from zero.

    Minimises mean cross-entropy + ``l2``/2 · ‖W‖² (the bias is not penalised). Returns (W (C, D), b (C,)).
    """
    x = features.float()
    w = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, labels) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


class _Features(nn.Module):
    """The classifier's input of a :class:`~simclrv2.models.FineTuneModel` (h, or head layer k's output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)  # type: ignore[operator]


def warm_start_subset(data: ImageData) -> ImageData:
    """A fixed random subset of at most :data:`WARM_START_IMAGES` images (all of them when fewer)."""
    n = min(WARM_START_IMAGES, len(data))
    if n == len(data):
        return data
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return subset_data(data, pick)


@torch.no_grad()
def fit_classifier(
    model: nn.Module,
    data: ImageData,
    targets: Tensor | None,
    feature_pass: dict[str, Any],
    l2: float,
    temperature: float = 1.0,
    show_progress: bool = True,
) -> Tensor:
    """Set ``model.classifier`` (a Linear on ``model.features``) to the logistic regression of ``targets``
    (class indices, or class probabilities (N, C); None = ``data``'s labels) on the frozen features of
    ``data``, scaled by ``temperature`` so that softmax(logits / temperature) is the fitted model. Returns
    the fitted model's logits (before the scaling) on ``data``. ``feature_pass``: device, precision,
    batch_size, crop_size, channels_last of the (eval-mode, centre-crop) feature pass."""
    feats, labels = extract_features(
        _Features(model), data, desc="warm start", show_progress=show_progress, **feature_pass
    )
    y = labels if targets is None else targets.to(feats.device)
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, nn.Linear)
    w, b = fit_logistic_regression(feats, y, classifier.out_features, l2=l2, max_iter=500)
    classifier.weight.copy_(w * temperature)
    classifier.bias.copy_(b * temperature)
    return feats @ w.T + b
