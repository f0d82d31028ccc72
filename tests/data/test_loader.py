"""The PyTorch loader backend: batches, sharding, order, resizing (no ffcv needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infoview.data import build_loader, fit_square, open_source
from infoview.data.sources import ArraySource
from infoview.errors import InfoviewError


def numbered(n: int = 50, size: int = 8) -> ArraySource:
    """Images whose pixels spell their own index, so a batch says which images it holds."""
    images = np.zeros((n, size, size, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    return ArraySource("numbered", images, np.arange(n) % 3)


def indices_of(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist()


def read_all(loader) -> list[int]:
    return [i for images, _ in loader for i in indices_of(images)]


def test_digits_batches_are_uint8_images_and_int64_labels():
    loader = build_loader("digits", batch_size=64, num_workers=0)
    assert loader.backend == "pytorch" and len(loader) == 1437 // 64  # drops the partial batch when shuffling
    images, labels = next(iter(loader))
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.uint8 and images.device.type == "cpu"
    assert labels.shape == (64,) and labels.dtype == torch.int64 and 0 <= labels.min() <= labels.max() <= 9
    # unshuffled, the loader gives the source's images, all of them, in order
    loader = build_loader("digits", split="test", batch_size=64, shuffle=False, num_workers=0)
    assert len(loader) == 6  # 360 = 5 x 64 + 40: the last partial batch is kept
    src = open_source("digits", split="test")
    images = torch.cat([x for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert images.shape == (360, 3, 32, 32)
    assert torch.equal(images.permute(0, 2, 3, 1), torch.from_numpy(np.stack([src[i][0] for i in range(360)])))
    assert torch.equal(labels, torch.from_numpy(src.labels()))


def test_worker_processes_give_the_same_batches():
    src = numbered(40)
    inline = build_loader(src, batch_size=8, num_workers=0, seed=3)
    workers = build_loader(src, batch_size=8, num_workers=2, seed=3)
    assert read_all(inline) == read_all(workers)


def test_two_ranks_read_disjoint_halves():
    src = numbered(50)
    shards = [
        read_all(build_loader(src, batch_size=4, distributed=True, rank=r, world_size=2, drop_last=False, num_workers=0))
        for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 25
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(50))


def test_distributed_without_ranks_or_init_is_an_error():
    with pytest.raises(InfoviewError, match=r"torch.distributed initialised, or rank= and world_size="):
        build_loader(numbered(), batch_size=4, distributed=True)
    with pytest.raises(InfoviewError, match=r"rank 2 is not in"):
        build_loader(numbered(), batch_size=4, distributed=True, rank=2, world_size=2)


def test_order_is_fixed_by_seed_and_epoch():
    src = numbered(50)
    a = build_loader(src, batch_size=10, seed=7, num_workers=0)
    b = build_loader(src, batch_size=10, seed=7, num_workers=0)
    epoch0 = read_all(a)
    assert epoch0 == read_all(b)  # same seed -> same order
    assert sorted(epoch0) == list(range(50)) and epoch0 != list(range(50))
    epoch1 = read_all(a)  # iterating again moves to the next epoch
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(50))
    a.set_epoch(0)
    assert read_all(a) == epoch0
    assert read_all(build_loader(src, batch_size=10, seed=8, num_workers=0)) != epoch0
    assert read_all(build_loader(src, batch_size=10, shuffle=False, num_workers=0)) == list(range(50))


def test_an_epoch_can_start_mid_way_for_a_resumed_run():
    src = numbered(50)
    a = build_loader(src, batch_size=10, seed=3, num_workers=0)
    a.set_epoch(2)
    full = read_all(a)
    a.set_epoch(2, start_batch=3)  # a run stopped after 3 batches of epoch 2 reads the rest
    assert read_all(a) == full[30:]
    assert read_all(a) != full  # then epoch 3 follows, in full
    a.set_epoch(2)
    assert read_all(a) == full  # the start applies to one iteration only
    with pytest.raises(InfoviewError, match="start_batch"):
        a.set_epoch(0, start_batch=6)


def test_reading_leaves_the_global_random_stream_alone():
    """A resumed run starts one more iteration mid-epoch: it must not move what the steps draw from."""
    loader = build_loader(numbered(20), batch_size=5, seed=0, num_workers=0)
    before = torch.get_rng_state()
    read_all(loader)
    loader.set_epoch(0, start_batch=2)
    read_all(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_resolution_resizes_once_to_a_fixed_square():
    loader = build_loader("shapes", batch_size=4, resolution=32, split="test", num_workers=0)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and loader.resolution == 32
    assert build_loader("shapes", batch_size=4, num_workers=0).resolution == 64
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255  # the centre square of a 20x40 image
    out = fit_square(wide, 10)
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_bad_backend_and_ffcv_on_a_folder_are_clear_errors(image_folder):
    with pytest.raises(InfoviewError, match=r"backend must be one of auto, ffcv, pytorch"):
        build_loader("digits", batch_size=4, backend="dali")
    with pytest.raises(InfoviewError, match=r"ffcv backend reads .beton files.*infoview prepare folder:"):
        build_loader(f"folder:{image_folder}", batch_size=4, backend="ffcv")
    with pytest.raises(InfoviewError, match=r"device 'gpu' is not a torch device"):
        build_loader("digits", batch_size=4, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(InfoviewError, match=r"no CUDA device is visible"):
            build_loader("digits", batch_size=4, device="cuda")
    loader = build_loader(f"folder:{image_folder}", batch_size=4, num_workers=0)  # auto -> pytorch
    assert loader.backend == "pytorch" and loader.classes == ["cat", "dog", "emu"] and loader.num_classes == 3


def test_an_image_that_replaces_an_unreadable_one_comes_with_its_own_index(image_folder):
    bad = sorted(image_folder.rglob("*.png"))[1]
    bad.write_bytes(b"not an image")
    loader = build_loader(f"folder:{image_folder}", batch_size=12, shuffle=False, num_workers=0, skip_bad=True,
                          with_indices=True)
    images, labels, index = next(iter(loader))
    assert index.tolist() == [0, 2, 2, *range(3, 12)]  # image 1 is unreadable: image 2 took its place, twice
    assert torch.equal(images[1], images[2])
