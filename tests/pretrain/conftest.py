"""A pretraining run small enough for a test: a narrow ResNet-18 at 16 px on digits."""
from __future__ import annotations

import pytest

TINY = [
    "data.source=digits",
    "data.batch_size=16",
    "data.num_workers=0",
    "augment.size=16",
    "model.arch=resnet18",
    "model.cifar_stem=true",
    "model.kwargs.channels=[8,16,32,64]",
    "model.proj_hidden=32",
    "model.proj_dim=16",
    "optim.warmup_epochs=0",
    "train.progress=false",
    "train.eval_every=0",
    "train.threads=1",
]


@pytest.fixture
def tiny():
    """``key=value`` overrides for a tiny run; add ``out_dir=`` and what the test varies."""
    return list(TINY)
