"""Linear probe on cached features: it learns what is learnable, nothing more, reproducibly."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from infoview.errors import ConfigError, InfoviewError
from infoview.eval.linear import fit_linear, train_linear_probe


def clusters(per_class: int, seed: int, num_classes: int = 10, dim: int = 32, noise: float = 0.3):
    """Gaussian blobs around fixed centres (the centres do not depend on ``seed``)."""
    centres = 3 * F.normalize(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)), dim=1)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_separable_features_are_learned():
    train, train_y = clusters(40, seed=0)
    test, test_y = clusters(20, seed=1)
    result = train_linear_probe(train, train_y, test, test_y, epochs=20)
    assert result["top1"] >= 99.0 and result["train_top1"] >= 99.0
    assert result["top5"] == 100.0
    assert {k: result[k] for k in ("epochs", "lr", "batch_size", "num_train", "num_test")} == {
        "epochs": 20, "lr": 0.1, "batch_size": 256, "num_train": 400, "num_test": 200,
    }
    json.dumps(result)  # goes straight into results.json


def test_random_labels_stay_at_chance_on_test():
    g = torch.Generator().manual_seed(5)
    train, test = torch.randn(600, 32, generator=g), torch.randn(1000, 32, generator=g)
    train_y, test_y = torch.randint(0, 10, (600,), generator=g), torch.randint(0, 10, (1000,), generator=g)
    result = train_linear_probe(train, train_y, test, test_y, epochs=30)
    assert abs(result["top1"] - 10.0) < 4.0
    assert result["train_top1"] > result["top1"] + 5  # it memorises some of the train split, which does not carry over


def test_same_seed_same_result_and_global_rng_untouched():
    train, train_y = clusters(10, seed=0, noise=2.0)  # overlapping: the result depends on every step
    test, test_y = clusters(10, seed=1, noise=2.0)
    rng = torch.get_rng_state()
    first = train_linear_probe(train, train_y, test, test_y, epochs=5, batch_size=32, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    torch.manual_seed(999)  # the global RNG plays no part
    assert train_linear_probe(train, train_y, test, test_y, epochs=5, batch_size=32, seed=3) == first

    a = fit_linear(train, train_y, epochs=5, batch_size=32, seed=3)
    b = fit_linear(train, train_y, epochs=5, batch_size=32, seed=3)
    c = fit_linear(train, train_y, epochs=5, batch_size=32, seed=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.weight, c.weight)


def test_standardize_rescues_badly_scaled_features():
    # the class signal is 1e-3 wide on top of an offset of 100
    train, train_y = clusters(40, seed=0)
    test, test_y = clusters(20, seed=1)
    train, test = 100 + 1e-3 * train, 100 + 1e-3 * test
    kept = train_linear_probe(train, train_y, test, test_y, epochs=20, normalize="none")
    standardized = train_linear_probe(train, train_y, test, test_y, epochs=20)
    assert kept["normalize"] == "none" and kept["top1"] < 30.0
    assert standardized["top1"] > 85.0


def test_fit_linear_returns_a_layer_for_raw_features():
    train, train_y = clusters(40, seed=0)
    test, test_y = clusters(20, seed=1)
    train, test = 5 + 4 * train, 5 + 4 * test  # standardisation has work to do
    layer = fit_linear(train, train_y, epochs=20)
    assert isinstance(layer, torch.nn.Linear) and layer.weight.shape == (10, 32)
    top1 = 100.0 * (layer(test).argmax(dim=1) == test_y).float().mean().item()
    assert top1 == pytest.approx(train_linear_probe(train, train_y, test, test_y, epochs=20)["top1"], abs=0.5)


def test_digits_pixels():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images.reshape(len(digits.images), -1), dtype=torch.float32)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n = int(0.8 * len(x))
    train, test = order[:n], order[n:]
    result = train_linear_probe(x[train], y[train], x[test], y[test], epochs=50)
    assert result["top1"] > 90.0
    assert result["top5"] > 98.0
    assert result["num_train"] == 1437 and result["num_test"] == 360


def test_fewer_than_five_classes_have_no_top5():
    train, train_y = clusters(10, seed=0, num_classes=3)
    result = train_linear_probe(train, train_y, train, train_y, epochs=2)
    assert "top5" not in result and result["top1"] > 90


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(train_labels=torch.zeros(7, dtype=torch.long)), "labels of shape"),
        (dict(test_labels=torch.zeros(3, dtype=torch.long)), "labels of shape"),
        (dict(train_labels=torch.full((30,), -1)), "needs labels"),
        (dict(train_feats=torch.zeros(0, 32), train_labels=torch.zeros(0, dtype=torch.long)), "empty"),
        (dict(test_feats=torch.zeros(0, 32), test_labels=torch.zeros(0, dtype=torch.long)), "empty"),
        (dict(test_feats=torch.zeros(4, 8), test_labels=torch.zeros(4, dtype=torch.long)), "dimensions"),
        (dict(train_labels=torch.zeros(30)), "integers"),
        (dict(num_classes=2), "num_classes=2"),
    ],
)
def test_bad_input_is_named(change, message):
    train, train_y = clusters(10, seed=0, num_classes=3)
    kwargs = dict(train_feats=train, train_labels=train_y, test_feats=train[:4], test_labels=train_y[:4], epochs=1)
    kwargs.update(change)
    with pytest.raises(InfoviewError, match=message):
        train_linear_probe(**kwargs)


@pytest.mark.parametrize(
    "setting", [dict(normalize="batchnorm"), dict(epochs=0), dict(batch_size=0), dict(lr=-1.0), dict(momentum=1.0)]
)
def test_bad_settings_are_config_errors(setting):
    train, train_y = clusters(10, seed=0, num_classes=3)
    with pytest.raises(ConfigError, match=next(iter(setting))):
        train_linear_probe(train, train_y, train, train_y, **setting)
