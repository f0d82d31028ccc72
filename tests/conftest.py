"""Shared fixtures: where the real data is, skips for optional hardware, tiny pretraining checkpoints.

Tests marked ``gpu`` are skipped without CUDA. With INFOVIEW_GPU_TESTS_ON_CPU=1
(benchmarks/gpu_check.py --dry-run sets it) those that take the
``gpu_device`` fixture run on the CPU instead, to check the tests themselves;
the others are still skipped.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from infoview.cli import main

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (CIFAR-10 JPEGs, Penn-Fudan, COCO128); skip when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (see README: Data)")
    return SHARED_DATA


GPU_TESTS_ON_CPU = "INFOVIEW_GPU_TESTS_ON_CPU"


def _gpu_tests_on_cpu() -> bool:
    return os.environ.get(GPU_TESTS_ON_CPU, "").strip() not in ("", "0")


@pytest.fixture(scope="session")
def gpu_device():
    """The device a ``gpu`` test runs on: cuda, or the CPU when INFOVIEW_GPU_TESTS_ON_CPU=1 and there is no GPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if _gpu_tests_on_cpu():
        return torch.device("cpu")
    pytest.skip("needs a CUDA device")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_cuda_only = pytest.mark.skip(
        reason=f"needs a CUDA device ({GPU_TESTS_ON_CPU}=1 runs only the gpu tests that take the gpu_device fixture)")
    on_cpu = _gpu_tests_on_cpu()
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            if not on_cpu:
                item.add_marker(skip_gpu)
            elif "gpu_device" not in getattr(item, "fixturenames", ()):
                item.add_marker(skip_cuda_only)


# --- pretraining checkpoints small enough for evaluator and export tests (a few seconds each, made once)
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
