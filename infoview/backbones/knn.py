"""Weighted kNN on frozen features: the cheap accuracy monitor of self-supervised runs.

Why kNN: it needs no training, no hyper-parameter search beyond k and a
temperature, and it reads the geometry the contrastive objective shapes
directly, since InfoNCE-style objectives compare embeddings by cosine
similarity. It is the monitor the engine runs every few epochs and the quick
check of an exported backbone (``infoview knn``).

The rule is the weighted vote of Wu et al., "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination" (2018), in the form the DINO,
solo-learn and InstDisc evaluations use:

    f = f / ||f||                            (train and test features)
    s_j = <f_test, f_train_j>                (cosine similarity)
    N_k = the k training samples with the largest s_j
    score(c) = sum_{j in N_k, y_j = c} exp(s_j / T)

with k = 200 and T = 0.07 by default; the prediction is the class with the
largest score. Here the scores of each test sample are divided by their sum
(a softmax over the k neighbours' similarities), which leaves the ranking of
classes unchanged, gives scores that read as vote shares in [0, 1], and cannot
overflow for small temperatures.

Test samples are processed ``chunk_size`` rows at a time, so memory stays at
chunk_size x N similarities whatever the size of the test set.
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from infoview.backbones.features import check_features
from infoview.errors import InfoviewError


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InfoviewError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_temperature(temperature) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = float("nan")
    if not t > 0 or t == float("inf"):
        raise InfoviewError(f"temperature must be a positive number, got {temperature!r}")
    return t


def _check_test(test_feats, dim: int, device: torch.device) -> Tensor:
    test = torch.as_tensor(test_feats)
    if test.dim() != 2 or test.shape[1] != dim:
        raise InfoviewError(f"test features must be (M, {dim}) like the train features, got shape {tuple(test.shape)}")
    if test.shape[0] == 0:
        raise InfoviewError("test features are empty; expected at least one sample")
    test = test.to(device=device, dtype=torch.float32)
    if not torch.isfinite(test).all():
        raise InfoviewError("test features contain NaN or inf")
    return test


def _check_num_classes(num_classes, labels: Tensor, name: str) -> int:
    c = positive_int(num_classes, "num_classes")
    if labels.numel() and int(labels.max()) >= c:
        raise InfoviewError(f"{name} labels go up to {int(labels.max())} but num_classes={c}; expected labels < {c}")
    return c


def knn_predict(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> Tensor:
    """Class scores (M, num_classes) of the weighted kNN vote, each row summing to 1.

    ``k`` is clamped to the number of training samples. Runs on the device of
    ``train_feats``; the scores come back there, as float32.
    """
    train, labels = check_features(train_feats, train_labels, "kNN train", needed_by="kNN")
    num_classes = _check_num_classes(num_classes, labels, "kNN train")
    k = min(positive_int(k, "k"), train.shape[0])
    t = check_temperature(temperature)
    chunk_size = positive_int(chunk_size, "chunk_size")
    test = _check_test(test_feats, train.shape[1], train.device)

    train = F.normalize(train, dim=1)
    test = F.normalize(test, dim=1)
    scores = torch.zeros(test.shape[0], num_classes, dtype=torch.float32, device=train.device)
    for start in range(0, test.shape[0], chunk_size):
        sims = test[start : start + chunk_size] @ train.T  # (c, N)
        top_sims, top_idx = sims.topk(k, dim=1)  # (c, k)
        weights = torch.softmax(top_sims / t, dim=1)  # exp(s / T), divided by the row's sum
        scores[start : start + chunk_size].scatter_add_(1, labels[top_idx], weights)
    return scores


def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> dict:
    """Top-1 (and top-5 when there are >= 5 classes) accuracy in percent of the weighted kNN.

    ``num_classes=None`` takes the largest label of either split plus one.
    Returns ``{"top1", "top5", "k", "temperature", "num_train", "num_test"}``
    with ``k`` the value used after clamping to the number of training samples.
    """
    train, train_y = check_features(train_feats, train_labels, "kNN train", needed_by="kNN")
    test, test_y = check_features(test_feats, test_labels, "kNN test", needed_by="kNN accuracy")
    if test.shape[1] != train.shape[1]:
        raise InfoviewError(
            f"train features have {train.shape[1]} dimensions but test features {test.shape[1]}; expected the same"
        )
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    else:
        num_classes = _check_num_classes(num_classes, test_y, "kNN test")
    scores = knn_predict(train, train_y, test, num_classes, k=k, temperature=temperature, chunk_size=chunk_size)
    test_y = test_y.to(scores.device)
    m = test_y.shape[0]
    result = {"top1": 100.0 * int((scores.argmax(dim=1) == test_y).sum()) / m}
    if num_classes >= 5:
        top5 = scores.topk(5, dim=1).indices
        result["top5"] = 100.0 * int((top5 == test_y[:, None]).any(dim=1).sum()) / m
    result.update(
        k=min(int(k), train.shape[0]),
        temperature=float(temperature),
        num_train=int(train.shape[0]),
        num_test=int(test.shape[0]),
    )
    return result
