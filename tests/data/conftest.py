"""Fixtures for the data tests: tiny image folders, real CIFAR JPEGs, ffcv skips.

``shared_data`` (../shared/data, skipped when missing) comes from tests/conftest.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

def ffcv_skip_reason() -> str | None:
    # through infoview's check, which also undoes ffcv's import-time torch.set_num_threads(1)
    from infoview.data.beton import ffcv_import_error

    return ffcv_import_error()


def pytest_collection_modifyitems(config, items):
    marked = [item for item in items if item.get_closest_marker("ffcv")]
    if marked and ffcv_skip_reason():
        skip = pytest.mark.skip(reason=ffcv_skip_reason())
        for item in marked:
            item.add_marker(skip)


def _smooth_image(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A smooth colour image (gradients and a blob) that JPEG keeps close."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
    chans = [rng.uniform(40, 200) + rng.uniform(-40, 40) * xx + rng.uniform(-40, 40) * yy + rng.uniform(-50, 50) * blob for _ in range(3)]
    return np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)


def make_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 4, size: int = 32, seed: int = 0) -> Path:
    """root/<class>/<i>.png with smooth images; returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(_smooth_image(rng, size)).save(root / cls / f"{i:03d}.png")
    return root


@pytest.fixture
def smooth_image():
    """``smooth_image(rng, size)``: a smooth (size, size, 3) uint8 image."""
    return _smooth_image


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "imgs")


@pytest.fixture
def cifar_folder(tmp_path, shared_data) -> Path:
    """A tmp copy of 3 classes x 3 real CIFAR-10 JPEGs, in train/ and test/ splits."""
    src = shared_data / "cifar10"
    if not (src / "train").is_dir():
        pytest.skip(f"{src}/train not found")
    root = tmp_path / "c10"
    for split in ("train", "test"):
        for cls in ("airplane", "cat", "truck"):
            files = sorted((src / split / cls).iterdir())[:3]
            (root / split / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / split / cls / f.name)
    return root
