"""extract_features: what comes back, in which order, and that the encoder is left as it was."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infoview.augment.recipes import normalization
from infoview.backbones.features import extract_features
from infoview.data import build_loader
from infoview.errors import InfoviewError

MEAN, STD = normalization("imagenet", None, None)


def tiny_net(dim: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, dim, 3, stride=2, padding=1), nn.Dropout(0.5),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


@pytest.fixture(scope="module")
def digits_test():
    return build_loader("digits", batch_size=64, split="test", shuffle=False, num_workers=0)


def test_digits_test_split_features_and_labels_in_order(digits_test):
    from sklearn.datasets import load_digits

    net = tiny_net()
    feats, labels = extract_features(net, digits_test, MEAN, STD)
    assert feats.shape == (360, 16) and feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert labels.dtype == torch.int64
    assert labels.tolist() == load_digits().target[-360:].tolist()

    # the first rows are the encoder applied to the normalised first batch
    images, _ = next(iter(digits_test))
    x = (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net.eval()(x)
    assert torch.allclose(feats[:64], expected, atol=1e-5)


def test_runs_in_eval_mode_and_restores_each_module(digits_test):
    net = tiny_net()
    net.train()
    net[1].eval()  # a frozen BatchNorm inside a training encoder stays frozen
    first, _ = extract_features(net, digits_test, MEAN, STD, max_images=100)
    second, _ = extract_features(net, digits_test, MEAN, STD, max_images=100)
    assert torch.equal(first, second)  # dropout off, BatchNorm on running stats
    assert net.training and not net[1].training and net[4].training
    assert torch.equal(net[1].running_mean, torch.zeros(8))  # no statistics were updated

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = nn.Sequential(Broken()).train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(broken, digits_test, MEAN, STD)
    assert broken.training and broken[0].training


def test_max_images_truncates_the_last_batch(digits_test):
    net = tiny_net()
    feats, labels = extract_features(net, digits_test, MEAN, STD, max_images=100)
    all_feats, all_labels = extract_features(net, digits_test, MEAN, STD)
    assert feats.shape == (100, 16) and labels.shape == (100,)
    assert torch.equal(labels, all_labels[:100])
    assert torch.allclose(feats, all_feats[:100])
    assert extract_features(net, digits_test, MEAN, STD, max_images=10_000)[0].shape == (360, 16)


def test_half_precision_encoder_gives_float32_features():
    net = tiny_net().to(torch.bfloat16)
    batches = [(torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8), torch.arange(5))]
    feats, labels = extract_features(net, batches, MEAN, STD, progress=True)
    assert feats.dtype == torch.float32 and feats.shape == (5, 16)
    assert torch.equal(labels, torch.arange(5))


def test_bad_input_is_named():
    net = tiny_net()
    image = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(InfoviewError, match="no images"):
        extract_features(net, [], MEAN, STD)
    with pytest.raises(InfoviewError, match="uint8"):
        extract_features(net, [(image.float(), torch.zeros(2))], MEAN, STD)
    with pytest.raises(InfoviewError, match="channels"):
        extract_features(net, [(image, torch.zeros(2))], MEAN[:2], STD[:2])
    with pytest.raises(InfoviewError, match="std"):
        extract_features(net, [(image, torch.zeros(2))], MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(InfoviewError, match="pool feature maps"):
        extract_features(nn.Conv2d(3, 4, 3), [(image, torch.zeros(2))], MEAN, STD)
    with pytest.raises(InfoviewError, match="max_images"):
        extract_features(net, [(image, torch.zeros(2))], MEAN, STD, max_images=0)
