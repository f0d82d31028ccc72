"""Weighted kNN: accuracy on easy and impossible data, the vote's weighting, chunking, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infoview.backbones.knn import knn_accuracy, knn_predict
from infoview.errors import InfoviewError


def clusters(num_classes: int, per_class: int, dim: int = 16, noise: float = 0.05, seed: int = 0):
    """Points around random unit centres, one centre per class."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, dim, generator=g), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    feats = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_separated_clusters_are_classified_perfectly():
    train, train_y = clusters(10, 30, seed=0)
    test, test_y = clusters(10, 10, seed=0)  # same centres, fresh noise below
    test = test + 0.05 * torch.randn(test.shape, generator=torch.Generator().manual_seed(1))
    result = knn_accuracy(train, train_y, test, test_y)
    assert result["top1"] == 100.0
    assert result["top5"] == 100.0
    assert result == {**result, "k": 200, "temperature": 0.07, "num_train": 300, "num_test": 100}


def test_shuffled_labels_give_chance_accuracy():
    # the label is the index of the largest coordinate: kNN learns it from neighbours
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2000, 10, generator=g)
    labels = feats.argmax(dim=1)
    train, train_y, test, test_y = feats[:1000], labels[:1000], feats[1000:], labels[1000:]
    assert knn_accuracy(train, train_y, test, test_y)["top1"] > 50.0
    shuffled = train_y[torch.randperm(1000, generator=g)]
    result = knn_accuracy(train, shuffled, test, test_y)
    assert abs(result["top1"] - 10.0) < 4.0  # chance is 10%; 1000 test samples
    assert abs(result["top5"] - 50.0) < 8.0


def test_k1_is_plain_nearest_neighbour():
    g = torch.Generator().manual_seed(3)
    train, test = torch.randn(200, 8, generator=g) * 3 + 1, torch.randn(50, 8, generator=g)
    train_y = torch.randint(0, 7, (200,), generator=g)
    nearest = torch.cdist(F.normalize(test, dim=1), F.normalize(train, dim=1)).argmin(dim=1)
    scores = knn_predict(train, train_y, test, num_classes=7, k=1)
    assert torch.equal(scores.argmax(dim=1), train_y[nearest])
    assert torch.equal(scores.max(dim=1).values, torch.ones(50))  # one neighbour holds the whole vote


def test_similarity_weighting_can_overrule_the_majority():
    # the test point sits on top of one class-0 sample; two class-1 samples are 60 degrees away
    a = math.radians(60)
    train = torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)], [math.cos(a), -math.sin(a)]])
    train_y = torch.tensor([0, 1, 1])
    test = torch.tensor([[2.0, 0.0]])  # the scale does not matter: cosine similarity

    sharp = knn_predict(train, train_y, test, num_classes=2, k=3, temperature=0.07)
    w0, w1 = math.exp(1.0 / 0.07), 2 * math.exp(0.5 / 0.07)
    assert sharp[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1)], rel=1e-5)
    assert sharp.argmax().item() == 0  # exp(1/T) outweighs 2 exp(0.5/T)

    flat = knn_predict(train, train_y, test, num_classes=2, k=3, temperature=100.0)
    assert flat.argmax().item() == 1  # weights nearly equal: the 2-vs-1 majority wins


def test_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(4)
    train, test = torch.randn(300, 12, generator=g), torch.randn(101, 12, generator=g)
    train_y = torch.randint(0, 5, (300,), generator=g)
    whole = knn_predict(train, train_y, test, num_classes=5, k=20)
    chunked = knn_predict(train, train_y, test, num_classes=5, k=20, chunk_size=7)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert torch.equal(whole.argmax(dim=1), chunked.argmax(dim=1))
    assert torch.allclose(whole.sum(dim=1), torch.ones(101))


def test_k_is_clamped_and_top5_needs_five_classes():
    train, train_y = clusters(3, 2)
    result = knn_accuracy(train, train_y, train, train_y)
    assert result["k"] == 6 and result["num_train"] == 6
    assert "top5" not in result
    assert knn_predict(train, train_y, train, num_classes=3, k=50).shape == (6, 3)


def test_num_classes_defaults_to_labels_of_both_splits():
    train, train_y = clusters(2, 5)
    test_y = torch.tensor([0, 1, 5])
    result = knn_accuracy(train, train_y, train[:3], test_y)
    assert result["top1"] == pytest.approx(100 / 3)  # label 5 is never predicted
    assert "top5" in result  # 6 classes


def test_unlabelled_training_samples_are_an_error():
    train, train_y = clusters(3, 4)
    train_y[2] = -1
    with pytest.raises(InfoviewError, match="kNN needs labels"):
        knn_accuracy(train, train_y, train, torch.zeros(12, dtype=torch.long))
    with pytest.raises(InfoviewError, match="kNN needs labels"):
        knn_predict(train, train_y, train, num_classes=3)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(test_feats=torch.zeros(4, 5)), "test features"),
        (dict(train_labels=torch.zeros(7, dtype=torch.long)), "labels of shape"),
        (dict(train_feats=torch.zeros(0, 8), train_labels=torch.zeros(0, dtype=torch.long)), "empty"),
        (dict(num_classes=2), "num_classes=2"),
        (dict(k=0), "k must be"),
        (dict(temperature=0.0), "temperature"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_input_is_named(change, message):
    train, train_y = clusters(3, 4, dim=8)
    kwargs = dict(train_feats=train, train_labels=train_y, test_feats=train[:4], num_classes=3)
    kwargs.update(change)
    with pytest.raises(InfoviewError, match=message):
        knn_predict(**kwargs)
