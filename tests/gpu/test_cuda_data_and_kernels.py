"""The GPU's own data paths and kernels against the CPU's: the resident split, nvJPEG, the softmax LSE, fused optimisers.

Marked ``gpu`` (tests/gpu/test_cuda_paths.py says how they run on a CPU for
``benchmarks/gpu_check.py --dry-run``). Each builds the same thing on the
device under test and on the CPU and compares: what the tests in tests/data
and tests/objectives check on the CPU, here for the code that runs only on a GPU.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from infoview.data import build_loader

pytestmark = pytest.mark.gpu


def photo_folder(root, per_class: int = 6):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:60]
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            chans = [rng.uniform(30, 220) + rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy for _ in range(3)]
            Image.fromarray(np.clip(np.stack(chans, -1), 0, 255).astype(np.uint8)).save(root / c / f"{i}.jpg")
    return f"folder:{root}"


def epoch(loader, n=1, start=1):
    loader.set_epoch(n, start_batch=start)
    return [tuple(t.cpu() for t in b) for b in loader]


def test_the_resident_split_on_the_device_gives_the_cpu_loaders_batches(gpu_device, tmp_path):
    source = photo_folder(tmp_path / "p")
    kw = dict(batch_size=4, seed=3, num_workers=0, resolution=24, with_indices=True)
    resident = build_loader(source, backend="resident", device=gpu_device, **kw)
    assert resident.split.images.device == gpu_device
    images, _, _ = next(iter(resident))
    assert images.device == gpu_device
    got, want = epoch(resident), epoch(build_loader(source, backend="pytorch", device="cpu", **kw))
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        assert all(torch.equal(a, b) for a, b in zip(g, w))


def test_jpegs_decoded_on_the_device_match_the_workers_decoding(gpu_device, tmp_path):
    source = photo_folder(tmp_path / "p")
    kw = dict(batch_size=5, seed=3, num_workers=0, resolution=24, with_indices=True)
    device = build_loader(source, decode="device", device=gpu_device, **kw)
    got, want = epoch(device), epoch(build_loader(source, device="cpu", **kw))
    assert not device.decoder.cpu_decoded  # nvJPEG read every file
    for (gi, gl, gx), (wi, wl, wx) in zip(got, want):
        assert torch.equal(gl, wl) and torch.equal(gx, wx)
        diff = (gi.int() - wi.int()).abs()
        # nvJPEG's inverse DCT and upsampling round differently from libjpeg's; a wrong image or channel
        # order is off by tens of levels
        assert diff.float().mean() < 1.0 and diff.max() <= 8, (diff.float().mean(), diff.max())


@pytest.mark.parametrize("scales", [(1.0,), (2.0, 1.0)])
def test_the_devices_row_lse_path_matches_float64_on_the_cpu(gpu_device, scales):
    from infoview.objectives import lse

    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(1024, 1536, generator=g, dtype=torch.float64) * 4
    x64[torch.arange(1024), torch.arange(1024)] = -math.inf
    w = torch.randn(1024, len(scales), generator=g, dtype=torch.float64)
    path = lse.choose_path(x64.to(gpu_device, torch.float32), scales)
    assert path == ("softmax" if gpu_device.type == "cuda" else "chunked")
    x = x64.to(gpu_device, torch.float32).requires_grad_(True)
    got = lse.row_lse(x, scales)
    (got * w.to(gpu_device, torch.float32)).sum().backward()
    ref_x = x64.clone().requires_grad_(True)
    ref = lse.row_lse(ref_x, scales, path="plain")
    (ref * w).sum().backward()
    torch.testing.assert_close(got.double().cpu(), ref.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x.grad.double().cpu(), ref_x.grad, rtol=1e-4, atol=1e-6)
    assert (x.grad[x.detach() == -math.inf] == 0).all()


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimisers_on_the_device_take_the_foreach_steps(gpu_device, name, same_steps):
    from infoview.training.optim import build_optimizer, fused_choice

    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(gpu_device)
              for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = fused_choice(None, name, gpu_device) if gpu_device.type == "cuda" else True
    opts = [build_optimizer(name, m, 0.05, weight_decay=0.01, fused=f) for m, f in zip(models, (False, fused))]
    assert opts[1].defaults["fused"] is True
    x = torch.randn(64, 16, device=gpu_device)
    same_steps(models, opts, x, rtol=1e-4, atol=1e-5)
