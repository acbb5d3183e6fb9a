import numpy as np
import pytest
import torch

from simclrv2.engine.evaluate import knn_classify, topk_accuracy


def _knn_reference(train, train_labels, test, num_classes, k, temperature):
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    test = test / np.linalg.norm(test, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, q in enumerate(test):
        sim = train @ q
        for j in np.argsort(-sim)[:k]:
            scores[i, train_labels[j]] += np.exp(sim[j] / temperature)
    return scores


def test_weighted_knn_matches_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 16))
    labels = rng.integers(0, 5, size=300)
    test = rng.normal(size=(40, 16))
    expected = _knn_reference(train, labels, test, 5, k=20, temperature=0.1)
    got = knn_classify(
        torch.tensor(train), torch.tensor(labels), torch.tensor(test), 5, k=20, temperature=0.1, chunk_size=7
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_knn_on_separable_clusters_is_perfect_and_k_is_clamped() -> None:
    centers = torch.eye(4) * 10
    train = centers.repeat_interleave(5, 0) + 0.1 * torch.randn(20, 4)
    labels = torch.arange(4).repeat_interleave(5)
    scores = knn_classify(train, labels, centers + 0.1, num_classes=4, k=3, temperature=0.1)
    assert topk_accuracy(scores, torch.arange(4))["top1"] == 100.0
    # k larger than the memory bank uses every training sample instead of failing.
    assert knn_classify(train, labels, centers, num_classes=4, k=1000).shape == (4, 4)


def test_topk_accuracy() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    acc = topk_accuracy(scores, labels, ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(100 / 3)
    assert acc["top2"] == pytest.approx(200 / 3)
    assert acc["top5"] == 100.0
