"""`infoview linear augment=true`: the probe trains on random crops + flips through the frozen encoder."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from infoview.augment import resolve
from infoview.backbones.features import extract_features
from infoview.cli import main
from infoview.data import build_loader
from infoview.eval.linear import train_linear_probe, train_linear_probe_augmented
from infoview.eval.linear import PROBE_VIEW_OVERRIDES

COMMON = ["data.num_workers=0", "train.progress=false", "train.device=cpu"]


class Pixels(nn.Module):
    """A frozen 'encoder' that averages 4x4 blocks of a 32x32 view: 8x8x3 features; counts its calls."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(192, affine=False)  # must stay in eval mode (its running stats: 0 / 1)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.bn(nn.functional.avg_pool2d(x, 4).flatten(1))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: a second torch thread only adds waiting on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return {split: build_loader("digits", 128, split=split, shuffle=False, num_workers=0)
            for split in ("train", "test")}


def test_probe_views_are_crop_and_flip_only():
    (spec,) = resolve("simclr", 32, num_views=1, overrides=PROBE_VIEW_OVERRIDES)
    assert spec.ops["crop"]["scale"] == (0.08, 1.0) and spec.ops["flip"]["p"] == 0.5
    assert all(spec.ops[op]["p"] == 0.0 for op in ("jitter", "grayscale", "blur", "solarize"))


def test_augmented_training_learns_and_leaves_the_encoder_frozen(digits):
    encoder = Pixels().train()
    (xtr, ytr), (xte, yte) = (extract_features(encoder, digits[s], (0.5,) * 3, (0.5,) * 3) for s in ("train", "test"))
    encoder.train()
    before = encoder.calls
    loader = build_loader("digits", 128, split="train", seed=0, shuffle=True, drop_last=False, num_workers=0)
    seen = []

    def views(images):  # no augmentation at all: the augmented loop must then match a probe on clean features
        seen.append(images.dtype)
        return [(images.float() / 255 - 0.5) / 0.5]

    probe = dict(epochs=3, batch_size=128, lr=0.5)
    result = train_linear_probe_augmented(encoder, loader, views, xtr, ytr, xte, yte, **probe)
    assert encoder.calls - before == 3 * len(loader) and set(seen) == {torch.uint8}
    assert encoder.training and encoder.bn.training  # modes put back
    assert encoder.bn.num_batches_tracked.item() == 0  # never ran in train mode
    assert result["augment"] is True and result["num_train"] == 1437 and result["num_test"] == 360
    cached = train_linear_probe(xtr, ytr, xte, yte, **probe)
    assert result["top1"] > 80 and abs(result["top1"] - cached["top1"]) < 5
    assert set(result) == set(cached) | {"augment"}


def test_linear_augment_true_on_digits(cifar_checkpoint, tmp_path, capsys):
    args = [f"backbone={cifar_checkpoint}", "train.epochs=2", "train.batch_size=256", "optim.lr=0.5", *COMMON]
    assert main(["linear", *args, f"out_dir={tmp_path / 'aug'}", "augment=true"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((tmp_path / "aug" / "linear.json").read_text())
    assert printed == saved and saved["augment"] is True and saved["epochs"] == 2
    assert saved["num_train"] == 1437 and saved["num_test"] == 360 and 15 < saved["top1"] <= 100
    assert main(["linear", *args, f"out_dir={tmp_path / 'again'}", "augment=true"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == saved["top1"]  # seeded: loader, views, layer
    assert main(["linear", *args, f"out_dir={tmp_path / 'cached'}"]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert cached["augment"] is False and cached["top1"] != saved["top1"]
