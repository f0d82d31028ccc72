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


def write_colour_folder(root, count: int, size: int, classes: str):
    """``count`` images of ``size`` px in ``root/<class>/`` (one letter of ``classes`` each, in turn): a square
    of a random colour on a background of another. Colour, unlike digits: CMC's ab channels hold something."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        (root / classes[i % len(classes)]).mkdir(exist_ok=True)
        img = np.empty((size, size, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        s = int(rng.integers(size // 4, size // 2 + 1))
        y, x = rng.integers(0, size - s, 2)
        img[y:y + s, x:x + s] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(root / classes[i % len(classes)] / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def colour_images():
    """:func:`write_colour_folder`, for a test module's own folder of colour images."""
    return write_colour_folder


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    """64 colour images of 16 px in two classes (:func:`write_colour_folder`)."""
    return write_colour_folder(tmp_path_factory.mktemp("colour"), 64, 16, "ab")
