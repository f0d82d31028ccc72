"""Pretraining checkpoints small enough for evaluator tests (a few seconds each, made once)."""
from __future__ import annotations

from pathlib import Path

import pytest

from infoview.cli import main

_COMMON = ["data.source=digits", "data.batch_size=16", "data.num_workers=0", "model.arch=resnet18",
           "model.kwargs.channels=[8,16,32,64]", "model.proj_hidden=32", "model.proj_dim=16",
           "train.progress=false", "train.eval_every=0", "train.threads=1", "train.max_steps=2"]


def _pretrain(folder: Path, *extra: str) -> Path:
    assert main(["pretrain", *_COMMON, f"out_dir={folder}", *extra]) == 0
    return folder / "checkpoints" / "last.pt"


@pytest.fixture(scope="session")
def cifar_checkpoint(tmp_path_factory) -> Path:
    """A narrow ResNet-18 with the CIFAR stem, pretrained 2 steps on digits at 16 px."""
    return _pretrain(tmp_path_factory.mktemp("ckpt_cifar"), "augment.size=16", "model.cifar_stem=true")


@pytest.fixture(scope="session")
def photo_checkpoint(tmp_path_factory) -> Path:
    """A narrow ResNet-18 with timm's standard stem (for photos: detection, segmentation), 2 steps."""
    return _pretrain(tmp_path_factory.mktemp("ckpt_photo"), "augment.size=32")
