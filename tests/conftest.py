"""Shared fixtures: where the real data is, small data files written for a test, skips for optional hardware,
tiny pretraining checkpoints.

Tests marked ``gpu`` are skipped without CUDA. With INFOVIEW_GPU_TESTS_ON_CPU=1
(benchmarks/gpu_check.py --dry-run sets it) those that take the
``gpu_device`` fixture run on the CPU instead, to check the tests themselves;
the others are still skipped.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from infoview.cli import main

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_at_a_terminal():
    """Ctrl-C reaches the tests as it reaches a user at a terminal, also when the suite was started in the
    background (``make test &``, ``nohup``), where the shell starts it with SIGINT ignored: the tests of what
    Ctrl-C does (in this process, and in the commands they start, which inherit an ignored SIGINT) need
    Python's own handler."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (CIFAR-10 JPEGs, Penn-Fudan, COCO128); skip when it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (see README: Data)")
    return SHARED_DATA


@pytest.fixture
def run_benchmark():
    """``run_benchmark(script, args)``: ``python benchmarks/<script> *args`` from the repository, output captured."""
    import subprocess
    import sys

    def run(script: str, args: list[str], timeout: float = 600) -> "subprocess.CompletedProcess":
        return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def tiny_cifar10(shared_data, tmp_path) -> Path:
    """A copy of 4 real CIFAR-10 JPEGs per class and split (train/, test/): 40 + 40 images."""
    import shutil

    dst = tmp_path / "tiny_cifar10"
    for split in ("train", "test"):
        for cls in sorted(p for p in (shared_data / "cifar10" / split).iterdir() if p.is_dir()):
            (dst / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.glob("*.jpg"))[:4]:
                shutil.copy(f, dst / split / cls.name / f.name)
    return dst


# --------------------------------------------------------------------------- small data files (tests/data, tests/eval)


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with zeros), as crowd regions use."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _poly(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def _make_coco(folder: Path, missing: int = 0) -> tuple[Path, Path]:
    """Five images: RGB of two sizes, RGBA without objects, a grayscale PNG with an object and a
    crowd region (held out), and an image without objects (held out); polygons, a box-only
    annotation and an uncompressed-RLE crowd."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    specs = [  # (file, size (w, h), mode)
        ("a.jpg", (96, 64), "RGB"), ("b.jpg", (64, 112), "RGB"), ("c.png", (80, 80), "RGBA"),
        ("d.png", (100, 72), "L"), ("e.jpg", (72, 72), "RGB"),
    ]
    meta, anns = [], []
    for i, (name, (w, h), mode) in enumerate(specs, start=1):
        chans = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 60, size=(h, w, chans), dtype=np.uint8)
        arr[10:40, 10:40] = 220
        Image.fromarray(arr.squeeze(-1) if chans == 1 else arr, mode).save(images / name)
        meta.append({"id": i * 10, "file_name": name, "height": h, "width": w})
    anns += [
        {"image_id": 10, "category_id": 3, "bbox": [10, 10, 30, 30], "segmentation": [_poly(10, 10, 30, 30)],
         "area": 900.0, "iscrowd": 0},
        {"image_id": 10, "category_id": 7, "bbox": [50, 20, 30, 40], "segmentation": [[50, 20, 80, 20, 65, 60]],
         "area": 600.0, "iscrowd": 0},
        {"image_id": 20, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900.0, "iscrowd": 0},  # box only
        {"image_id": 20, "category_id": 7, "bbox": [5, 60, 0, 10], "segmentation": [], "area": 0.0,
         "iscrowd": 0},  # an empty box: dropped from training
        {"image_id": 40, "category_id": 3, "bbox": [10, 10, 30, 30], "segmentation": [_poly(10, 10, 30, 30)],
         "area": 900.0, "iscrowd": 0},
    ]
    crowd = np.zeros((72, 100), dtype=bool)
    crowd[45:70, 50:95] = True
    anns.append({"image_id": 40, "category_id": 7, "bbox": [50, 45, 45, 25], "segmentation": _rle_uncompressed(crowd),
                 "area": float(crowd.sum()), "iscrowd": 1})
    for k, a in enumerate(anns, start=1):
        a["id"] = k
    for extra in range(missing):
        meta.append({"id": 100 + extra, "file_name": f"gone{extra}.jpg", "height": 10, "width": 10})
    cats = [{"id": 3, "name": "box"}, {"id": 7, "name": "thing"}]
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps({"images": meta, "annotations": anns, "categories": cats}))
    return images, ann_file


@pytest.fixture
def make_coco():
    """``make_coco(folder, missing=0) -> (images folder, instances.json)``: the synthetic COCO set of ``_make_coco``."""
    return _make_coco


def _write_mask_split(root: Path, split: str, stems, masks: bool = True, size=(20, 16), mask_size=None) -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "masks" / split).mkdir(parents=True, exist_ok=True)
    for stem in stems:
        Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(root / "images" / split / f"{stem}.jpg")
        if masks:
            w, h = mask_size or size
            Image.fromarray(np.full((h, w), 3, np.uint8)).save(root / "masks" / split / f"{stem}.png")


@pytest.fixture
def write_mask_split():
    """``write_mask_split(root, split, stems, masks=True, size=(20, 16), mask_size=None)``: root/images/<split>/<stem>.jpg
    (grey, size (w, h)) and root/masks/<split>/<stem>.png (all 3, mask_size or size)."""
    return _write_mask_split


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


# --- the worked examples of docs/architecture.md ("Adding a command", "Adding a method") as modules
@pytest.fixture
def doc_example_module(tmp_path, monkeypatch):
    """``add(package, section, name)``: the first python block under ``## <section>`` of
    docs/architecture.md, written as module ``name`` of ``package`` (a temp folder on its path);
    removed from ``sys.modules`` afterwards."""
    import re
    import sys

    added: list[str] = []

    def add(package, section: str, name: str) -> str:
        text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").split(f"## {section}", 1)[1]
        folder = tmp_path / f"doc_{name}"
        folder.mkdir()
        (folder / f"{name}.py").write_text(re.search(r"```python\n(.*?)```", text, re.S).group(1), encoding="utf-8")
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
        added.append(f"{package.__name__}.{name}")
        return added[-1]

    yield add
    for module in added:
        sys.modules.pop(module, None)


# --------------------------------------------------------------------------- DDP on CPU (gloo)


def _gloo_rank(rank: int, world: int, init_file: str, out_file: str, fn, args: tuple) -> None:
    """One process of ``gloo_ranks``: join the group, run ``fn(rank, *args)``, save what it returns."""
    import gc

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank, *args), f"{out_file}.{rank}")
        dist.barrier()  # neither rank tears gloo down while the other may still use it (it aborted, now and then)
        gc.collect()  # nor does a DDP wrapper keep the group alive past destroy_process_group (engine.run's order)
    finally:
        dist.destroy_process_group()


@pytest.fixture
def gloo_ranks(tmp_path):
    """``gloo_ranks(fn, *args, world=2)``: ``fn(rank, *args)`` in ``world`` processes joined in one gloo group
    (``fn`` a module-level function, so that the processes can import it); what each returned, in rank order."""
    import torch
    import torch.multiprocessing as mp

    def run(fn, *args, world: int = 2) -> list:
        folder = tmp_path / "gloo"
        folder.mkdir(exist_ok=True)
        out = str(folder / "out")
        mp.spawn(_gloo_rank, args=(world, str(folder / "init"), out, fn, args), nprocs=world, join=True)
        return [torch.load(f"{out}.{r}") for r in range(world)]

    return run


@pytest.fixture
def same_steps():
    """``same_steps(models, optimizers, x, rtol=, atol=)``: five steps of each model with its optimiser on the
    same loss of ``x``; their parameters then agree within the tolerance (a fused kernel against torch's loop)."""

    def check(models, optimizers, x, **tolerance):
        import torch

        for _ in range(5):
            for model, optimizer in zip(models, optimizers):
                optimizer.zero_grad()
                model(x).square().mean().backward()
                optimizer.step()
        for a, b in zip(*(m.parameters() for m in models)):
            torch.testing.assert_close(a, b, **tolerance)

    return check
