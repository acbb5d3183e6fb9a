"""Evaluation on frozen features: feature extraction and the weighted kNN monitor.

kNN follows the protocol of DINO's ``eval_knn.py`` and lightly's benchmarks (Wu et al. 2018):
cosine similarity between L2-normalised backbone features h, the k = 200 nearest training images vote
for their class with weight exp(similarity / T), T = 0.1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2 import distributed as dist
from simclrv2.data import BatchLoader, ImageData, center_crop
from simclrv2.data.subsets import subset_data
from simclrv2.engine.runtime import autocast, eval_mode, progress


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    data: ImageData,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 512,
    crop_size: int | None = None,
    channels_last: bool = True,
    limit: int | None = None,
    desc: str = "features",
    show_progress: bool = True,
    distributed: bool = False,
) -> tuple[Tensor, Tensor]:
    """Outputs of ``backbone`` (features h, or logits for a classifier; float32, (N, D)) and labels of
    ``data`` in dataset order, in eval mode, on the device.

    Images are centre-cropped for evaluation (SPEC 5); with ``limit`` only the first ``limit`` images
    are used (in dataset order).

    With ``distributed`` (every rank must call it then), each rank runs a contiguous share of the images
    (:func:`~simclrv2.distributed.shard_range`, uneven when N is not divisible by the world size) and the
    shares are gathered in rank order, so every rank returns exactly one row per image, in dataset order.
    """
    n = len(data) if limit is None else min(limit, len(data))
    if distributed and 1 < dist.get_world_size() <= n:  # (fewer images than ranks: each rank does all)
        start, stop = dist.shard_range(n)
        share = subset_data(data, torch.arange(start, stop))
        share_f, share_l = extract_features(
            backbone, share, device, precision, batch_size, crop_size, channels_last,
            desc=desc, show_progress=show_progress,
        )  # fmt: skip
        return dist.gather_uneven(share_f), dist.gather_uneven(share_l)
    image_size = data.image_shape[-1]
    crop = crop_size or image_size
    loader = BatchLoader(data, batch_size=batch_size, device=device, shuffle=False, drop_last=False)
    feats, labels = [], []
    seen = 0
    total = len(loader) if limit is None else min(len(loader), -(-limit // batch_size))
    bar = progress(loader.epoch(0), total=total, desc=desc, leave=False, disable=not show_progress)
    with eval_mode(backbone):
        for images, targets in bar:
            if limit is not None and seen >= limit:
                break
            x = center_crop(images, crop)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, precision):
                h = backbone(x)
            feats.append(h.float())
            labels.append(targets)
            seen += len(images)
    out_f, out_l = torch.cat(feats), torch.cat(labels)
    if limit is not None:
        out_f, out_l = out_f[:limit], out_l[:limit]
    return out_f, out_l


@torch.no_grad()
def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (N_test, num_classes) of the weighted kNN vote; argmax = prediction."""
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk_size):
        sim = test[start : start + chunk_size] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[top_idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def topk_accuracy(scores: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent; k larger than the number of classes counts as all classes."""
    out = {}
    ranked = scores.argsort(dim=1, descending=True)
    for k in ks:
        kk = min(k, scores.shape[1])
        hit = (ranked[:, :kk] == labels[:, None]).any(dim=1)
        out[f"top{k}"] = 100.0 * hit.double().mean().item()
    return out


def knn_accuracy(
    backbone: nn.Module,
    train: ImageData,
    test: ImageData,
    device: torch.device,
    precision: str = "fp32",
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 512,
    train_limit: int | None = None,
    crop_size: int | None = None,
    channels_last: bool = True,
) -> dict[str, float]:
    """Weighted kNN top-1/top-5 (percent) of ``backbone`` features, train split as memory bank."""

    def features(data: ImageData, limit: int | None, desc: str) -> tuple[Tensor, Tensor]:
        return extract_features(
            backbone, data, device, precision, batch_size, crop_size, channels_last, limit=limit, desc=desc
        )

    train_f, train_l = features(train, train_limit, "kNN bank")
    test_f, test_l = features(test, None, "kNN test")
    num_classes = max(len(test.classes), int(train_l.max().item()) + 1)
    scores = knn_classify(train_f, train_l, test_f, num_classes, k=k, temperature=temperature)
    return topk_accuracy(scores, test_l)
